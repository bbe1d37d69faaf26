"""Headless use: `blender -b --command scenewright generate|batch ...` and the same as a Python API.

    blender -b --command scenewright generate --image X --seg Y --out scene.blend [--render out.png]
                                               [--url U --token T | --start-backend] [--steps N] ...
    blender -b --command scenewright batch --input-dir D --out-dir O [...]

From Python (bpy module or Blender's console), with the extension enabled:
`generate(...)` and `batch(...)` of this module. Calls block: timers never fire
in background mode, so the work runs inline.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import bpy

from . import protocol
from .backend_process import BackendSettings, stop_started_backend
from .images import InputError, load_image
from .operators import start_generation
from .preferences import get_preferences
from .properties import parse_blocks

BATCH_SUMMARY = "summary.json"
# protocol.GenerationSettings fields that are SCENEWRIGHT_PG_scene properties of the same name
_SETTING_PROPS = ("steps", "seed", "mesh_resolution", "max_faces", "scene_size_m", "model", "guidance")


class GenerationError(RuntimeError):
    """One generation failed; the message is what the user needs to know."""


def generate(image: str, seg: str, out: str | None = None, *, render: str | None = None,
             backend: BackendSettings | None = None, settings: dict[str, Any] | None = None,
             render_samples: int = 16, ground: bool = False, colors: bool = True) -> dict[str, Any]:
    """Generate a scene from an image + seg map into a fresh file; save it to `out` (.blend) and render it if asked.

    The import adds a ground plane when `ground`, materials in the reference's colours when
    `colors`, and, for a render, a sun and a sky (in the result's collection).

    The current file is replaced by an empty one first (unsaved changes are lost): this is for batch work;
    interactively, use the panel's Generate.

    Returns {"job_id", "collection", "objects", "camera", "blend"}; raises GenerationError with a clear message.
    """
    _fresh_file()
    scene = bpy.context.scene
    props = scene.scenewright
    try:
        reference, seg_image = load_image(image), load_image(seg)
        seg_image.colorspace_settings.name = "Non-Color"
        _apply_settings(props, settings or {})
        props.reference_image, props.seg_image = reference, seg_image
        props.use_colors, props.add_ground, props.add_lighting = colors, ground, bool(render)
        errors: list[str] = []
        start_generation(bpy.context, backend or get_preferences().backend_settings(), errors.append)
    except InputError as exc:
        raise GenerationError(str(exc)) from None
    if errors:
        raise GenerationError(errors[0])
    job = props.jobs[0]
    collection = bpy.data.collections[job.collection]
    reference.pack()  # the camera background travels with the .blend
    summary = {
        "job_id": job.job_id,
        "collection": collection.name,
        "objects": sorted(obj.name for obj in collection.objects if obj.type == "MESH"),
        "camera": scene.camera.name if scene.camera is not None else None,
        "blend": None,
    }
    try:
        if render:
            _render(scene, render, render_samples)
        if out:
            out_path = os.path.abspath(out)
            os.makedirs(os.path.dirname(out_path), exist_ok=True)
            bpy.ops.wm.save_as_mainfile(filepath=out_path, check_existing=False)
            summary["blend"] = out_path
    except (RuntimeError, OSError) as exc:  # Blender reports failed operators as RuntimeError
        raise GenerationError(f"the scene was generated but could not be written: {exc}") from None
    return summary


def batch(input_dir: str, out_dir: str, *, backend: BackendSettings | None = None,
          settings: dict[str, Any] | None = None, render: bool = False, render_samples: int = 16,
          ground: bool = False, colors: bool = True) -> dict[str, Any]:
    """Every sub-folder of `input_dir` holding image.png + seg.png -> `out_dir`/<name>.blend; failures are recorded,
    not fatal. Writes and returns `out_dir`/summary.json."""
    cases = sorted(p for p in Path(input_dir).iterdir() if p.is_dir()) if Path(input_dir).is_dir() else []
    if not cases:
        raise GenerationError(f"{input_dir} has no sub-folders with image.png + seg.png")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for case in cases:
        start = time.perf_counter()
        entry: dict[str, Any] = {"name": case.name, "ok": False, "error": None, "job_id": None, "collection": None,
                                 "objects": [], "camera": None, "blend": None}
        try:
            entry.update(generate(str(case / "image.png"), str(case / "seg.png"), str(out / f"{case.name}.blend"),
                                  render=str(out / f"{case.name}.png") if render else None,
                                  backend=backend, settings=settings, render_samples=render_samples,
                                  ground=ground, colors=colors))
            entry["ok"] = True
        except GenerationError as exc:
            entry["error"] = str(exc)
        entry["seconds"] = round(time.perf_counter() - start, 3)
        print(f"scenewright batch: {case.name}: {'ok' if entry['ok'] else 'FAILED: ' + entry['error']}")
        results.append(entry)
    summary = {"format": "scenewright-batch/1", "input_dir": str(Path(input_dir).resolve()),
               "succeeded": sum(r["ok"] for r in results), "failed": sum(not r["ok"] for r in results), "cases": results}
    (out / BATCH_SUMMARY).write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary


def _fresh_file() -> None:
    """Start from an empty file so each output .blend holds only its own scene."""
    bpy.ops.wm.read_homefile(use_empty=True)


def _apply_settings(props, settings: dict[str, Any]) -> None:
    try:
        checked = protocol.GenerationSettings.from_dict(settings)
    except protocol.SettingsError as exc:
        raise InputError(str(exc)) from None
    for name in _SETTING_PROPS:
        value = getattr(checked, name)
        if value is not None:
            setattr(props, name, value)
    if checked.labels is not None:
        props.labels = ", ".join(checked.labels)
    if checked.guidance_scale is not None:
        props.custom_guidance, props.guidance_scale = True, checked.guidance_scale
    if checked.mi_blocks is not None:
        props.mi_blocks = ",".join(str(b) for b in checked.mi_blocks)
    props.timi_alpha = checked.timi.alpha


def _render(scene: bpy.types.Scene, path: str, samples: int) -> None:
    if scene.camera is None:
        raise GenerationError("the result has no camera to render through")
    scene.render.engine = "CYCLES"
    # Standard, not Blender's default AgX: a material's colour then renders as the reference pixels it came from
    scene.view_settings.view_transform = "Standard"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.render.filepath = os.path.abspath(path)
    scene.render.image_settings.file_format = "PNG"
    bpy.ops.render.render(write_still=True)


# ---- command line ----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blender -b --command scenewright",
                                     description="Generate placed 3D objects from a reference image and instance masks.")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="one image + seg map -> a .blend")
    gen.add_argument("--image", required=True, help="reference image (PNG/JPEG)")
    gen.add_argument("--seg", required=True, help="seg map: black background, one gray value per instance")
    gen.add_argument("--out", required=True, help="output .blend")
    gen.add_argument("--render", help="also render through the generated camera to this PNG")
    bat = sub.add_parser("batch", help="every sub-folder with image.png + seg.png -> .blend files and summary.json")
    bat.add_argument("--input-dir", required=True)
    bat.add_argument("--out-dir", required=True)
    bat.add_argument("--render", action="store_true", help="also render each result to <out-dir>/<name>.png")
    for p in (gen, bat):
        p.add_argument("--render-samples", type=int, default=16, help="Cycles samples for --render")
    for p in (gen, bat):
        conn = p.add_argument_group("backend (default: the add-on preferences)")
        conn.add_argument("--url", help="a running backend, e.g. http://127.0.0.1:8765")
        conn.add_argument("--token", default=os.environ.get(protocol.TOKEN_ENV_VAR),
                          help=f"its access token (default: ${protocol.TOKEN_ENV_VAR})")
        conn.add_argument("--start-backend", action="store_true", help="start (or reuse) a local backend")
        conn.add_argument("--environment", help="Python environment with scenewright installed (with --start-backend)")
        conn.add_argument("--data-dir", help="the local backend's data folder")
        conn.add_argument("--backend-model", help="model the started local backend loads (default, a hub id or a folder)")
        conn.add_argument("--device", choices=["auto", "cuda", "mps", "cpu"])
        conn.add_argument("--timeout", type=float, help="seconds per request")
        opts = p.add_argument_group("generation settings (default: the model's)")
        opts.add_argument("--model")
        opts.add_argument("--steps", type=int)
        opts.add_argument("--guidance-scale", type=float, help="classifier-free guidance scale")
        opts.add_argument("--guidance", choices=protocol.GUIDANCE_METHODS,
                          help="cfg, or timi: CFG plus TIMI's training-free instance guidance")
        opts.add_argument("--seed", type=int)
        opts.add_argument("--mi-blocks", help="multi-instance blocks, e.g. 8-12 or 8,10,12")
        opts.add_argument("--mesh-resolution", type=int)
        opts.add_argument("--max-faces", type=int, help="decimate each object to at most this many faces")
        opts.add_argument("--labels", help="a name per object in instance order, comma-separated (chair,table,lamp)")
        opts.add_argument("--ground", action="store_true", help="add a ground plane at z = 0")
        opts.add_argument("--no-colors", action="store_true", help="leave the objects without colour materials")
        opts.add_argument("--scene-size", type=float, dest="scene_size_m", help="scene width in metres")
    return parser


def _backend_from_args(args: argparse.Namespace) -> BackendSettings:
    base = get_preferences().backend_settings()
    fields = dict(base.__dict__)
    if args.url and args.start_backend:
        raise InputError("use either --url (a running backend) or --start-backend, not both")
    if args.url:
        fields.update(mode="REMOTE", url=args.url, token=args.token or "")
    elif args.start_backend:
        fields.update(mode="LOCAL", auto_start=True)
    for name in ("environment", "data_dir", "device", "timeout"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if args.backend_model:
        fields["model"] = args.backend_model
    return BackendSettings(**fields)


def _settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    settings = {name: getattr(args, name) for name in ("model", "steps", "guidance_scale", "seed", "mesh_resolution",
                                                        "max_faces", "scene_size_m", "guidance")
                if getattr(args, name) is not None}
    if args.labels:
        settings["labels"] = [part.strip() for part in args.labels.split(",")]
    if args.mi_blocks:
        settings["mi_blocks"] = parse_blocks(args.mi_blocks)
    return settings


def main(argv: list[str]) -> int:
    """The registered command line handler: 0 on success, 1 when generation failed, 2 for bad arguments."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help or a usage error; argparse has printed why
        return int(exc.code or 0)
    try:
        backend, settings = _backend_from_args(args), _settings_from_args(args)
        if args.command == "generate":
            summary = generate(args.image, args.seg, args.out, render=args.render, backend=backend, settings=settings,
                               render_samples=args.render_samples, ground=args.ground, colors=not args.no_colors)
            print(f"scenewright: {len(summary['objects'])} objects from job {summary['job_id']} -> {summary['blend']}")
            return 0
        summary = batch(args.input_dir, args.out_dir, backend=backend, settings=settings, render=args.render,
                        render_samples=args.render_samples, ground=args.ground, colors=not args.no_colors)
        print(f"scenewright: {summary['succeeded']} succeeded, {summary['failed']} failed; "
              f"see {Path(args.out_dir) / BATCH_SUMMARY}")
        return 0 if summary["failed"] == 0 else 1
    except (GenerationError, InputError) as exc:
        print(f"scenewright: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.start_backend:
            stop_started_backend()


_handle = None


def register() -> None:
    global _handle
    _handle = bpy.utils.register_cli_command("scenewright", main)


def unregister() -> None:
    global _handle
    if _handle is not None:
        bpy.utils.unregister_cli_command(_handle)
        _handle = None
