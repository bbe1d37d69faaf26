"""The main job: a bundled example image through the add-on in Blender (the bpy module), on the default model.

Starts a local backend (the add-on's own auto-start), generates the scene,
saves out/demo.blend, renders out/demo.png through the solved camera, and puts
the reference beside the render in out/demo-side-by-side.png.

    .venv/bin/python install/demo.py [--example desk] [--out out] [--model default] [--device auto]
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "backend" / "scenewright" / "assets" / "examples"
ADDON = "bl_ext.user_default.scenewright"


def say(message: str) -> None:
    print(f"[scenewright demo] {message}", flush=True)


def side_by_side(reference: Path, render: Path, out: Path) -> None:
    from PIL import Image

    left, right = Image.open(reference).convert("RGB"), Image.open(render).convert("RGB")
    right = right.resize((round(right.width * left.height / right.height), left.height))
    canvas = Image.new("RGB", (left.width + right.width, left.height), "white")
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width, 0))
    canvas.save(out)


def labels(example: Path) -> list[str]:
    """The example's object names (from its scene.json), so the demo's objects are called chair, table..."""
    import json

    return [inst["label"] for inst in sorted(json.loads((example / "scene.json").read_text())["instances"],
                                             key=lambda inst: inst["id"])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", default="desk", help=f"one of {sorted(p.name for p in EXAMPLES.iterdir())}")
    parser.add_argument("--out", type=Path, default=REPO / "out")
    parser.add_argument("--model", default="default", help="the backend's model: default, a folder or a hub repo id")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    args = parser.parse_args(argv)
    example = EXAMPLES / args.example
    if not (example / "image.png").is_file():
        say(f"no example {args.example!r} in {EXAMPLES}")
        return 2

    import bpy  # noqa: F401  (Blender as a Python module; first: it makes addon_utils importable)
    import addon_utils

    if addon_utils.enable(ADDON, default_set=True, handle_error=None) is None:
        say("the extension is not installed in this bpy: run `python install/install_extension.py --bpy`")
        return 1
    cli = importlib.import_module(f"{ADDON}.cli")
    backend_process = importlib.import_module(f"{ADDON}.backend_process")

    args.out.mkdir(parents=True, exist_ok=True)
    backend = backend_process.BackendSettings(mode="LOCAL", environment=sys.prefix, data_dir=str(args.out / "backend"),
                                              model=args.model, device=args.device, auto_start=True, timeout=60.0)
    say(f"generating {example / 'image.png'} with model {args.model!r} (a local backend starts first)")
    started = time.perf_counter()
    try:
        summary = cli.generate(str(example / "image.png"), str(example / "seg.png"), str(args.out / "demo.blend"),
                               render=str(args.out / "demo.png"), backend=backend, ground=True,
                               settings={"labels": labels(example)})
    except cli.GenerationError as exc:
        say(f"failed: {exc}")
        return 1
    finally:
        backend_process.stop_started_backend()
    side_by_side(example / "image.png", args.out / "demo.png", args.out / "demo-side-by-side.png")
    say(f"done in {time.perf_counter() - started:.0f} s: {len(summary['objects'])} objects in collection "
        f"{summary['collection']!r}, camera {summary['camera']!r}")
    for name in ("demo.blend", "demo.png", "demo-side-by-side.png"):
        say(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
