"""`scenewright generate`: one image + its instance masks -> result.glb + result.json, without the service."""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .protocol import SettingsError
from .settings_cli import add_generation_arguments, settings_from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scenewright generate", description=__doc__)
    parser.add_argument("--image", required=True, type=Path, help="reference image (PNG/JPEG)")
    parser.add_argument("--seg", required=True, type=Path, help="instance map: one gray value (or flat colour) per instance, 0/black = background")
    parser.add_argument("--out", required=True, type=Path, help="output folder for result.glb and result.json")
    parser.add_argument("--model", default="default", help="'default' (shipped), a model folder, or a hub repo id such as VAST-AI/MIDI-3D")
    parser.add_argument("--device", default="auto", help="auto | cuda | mps | cpu")
    parser.add_argument("--dtype", default=None, help="fp32 | fp16 | bf16 (default: bf16 on CUDA, else fp32)")
    add_generation_arguments(parser)
    parser.add_argument("--labels", nargs="+", default=None, metavar="NAME",
                        help="a name per instance, in instance order (ascending seg value): objects are named after them")
    parser.add_argument("--scene-size", type=float, default=None, dest="scene_size_m", help="scene width in metres")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args, scene_size_m=args.scene_size_m, labels=args.labels)
    except SettingsError as exc:
        print(f"scenewright generate: {exc}", file=sys.stderr)
        return 2
    for path in (args.image, args.seg):
        if not path.is_file():
            print(f"scenewright generate: {path} does not exist", file=sys.stderr)
            return 2

    from .export import export_result
    from .loading import ModelLoadError
    from .masks import MaskError
    from .pipeline import ScenePipeline

    def progress(stage: str, step: int, total: int) -> None:
        print(f"\r[{stage}] {step}/{total}   ", end="" if stage == "denoise" and step < total else "\n", file=sys.stderr, flush=True)

    try:
        pipe = ScenePipeline.from_pretrained(args.model, device=args.device, dtype=args.dtype)
        result = pipe.generate(Image.open(args.image), Image.open(args.seg), settings, progress=progress)
    except (ModelLoadError, MaskError, UnidentifiedImageError, ValueError) as exc:
        print(f"scenewright generate: {exc}", file=sys.stderr)
        return 1
    glb, manifest = export_result(result, args.out, job_id=uuid.uuid4().hex, model=args.model)
    print(f"wrote {glb} and {manifest} ({len(result.instances)} instances, "
          + ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items()) + ")")
    return 0
