"""The generation settings as command-line options, made from protocol.GenerationSettings' definitions.

`scenewright generate` and `scenewright predict` share them, so a new setting is one field
in protocol.py plus, when it needs a flag, one line here.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any

from .protocol import GUIDANCE_METHODS, GenerationSettings, TimiSettings


def on_off(text: str) -> bool:
    """argparse type of a boolean option: on/off, true/false, yes/no, 1/0."""
    value = text.strip().lower()
    if value in ("on", "true", "yes", "1"):
        return True
    if value in ("off", "false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """--steps, --guidance-scale, --guidance, --timi-*, --seed, --mi-blocks, --mesh-resolution, --max-faces."""
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="classifier-free guidance scale (default: the model's)")
    parser.add_argument("--guidance", choices=GUIDANCE_METHODS, default="cfg",
                        help="cfg: classifier-free guidance; timi: CFG plus TIMI's instance guidance (docs/guidance.md)")
    defaults = TimiSettings()
    for f in fields(TimiSettings):
        value = getattr(defaults, f.name)
        kind = on_off if isinstance(value, bool) else type(value)
        parser.add_argument(f"--timi-{f.name}", type=kind, default=None, metavar=type(value).__name__.upper(),
                            help=f"TIMI {f.name} (default {'on' if value is True else 'off' if value is False else value})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mi-blocks", type=int, nargs="*", default=None,
                        help="blocks with multi-instance attention (default: the model's); give none for K = 0")
    parser.add_argument("--mesh-resolution", type=int, default=None,
                        help="marching-cubes samples per axis (default: the model's)")
    parser.add_argument("--max-faces", type=int, default=None,
                        help="decimate each object to at most this many faces (default: the model's)")
    parser.add_argument("--candidates", type=int, default=None,
                        help="scenes sampled per request, the one agreeing most with the others kept (default: the model's)")
    parser.add_argument("--refine-poses", type=on_off, default=None, metavar="ON|OFF",
                        help="fit each instance's pose to its mask after the camera solve (default: the model's)")


def settings_from_args(args: argparse.Namespace, **extra: Any) -> GenerationSettings:
    """The validated settings of parsed arguments (raises protocol.SettingsError naming the bad one)."""
    timi = {f.name: getattr(args, f"timi_{f.name}") for f in fields(TimiSettings)
            if getattr(args, f"timi_{f.name}") is not None}
    data = {"steps": args.steps, "guidance_scale": args.guidance_scale, "guidance": args.guidance, "timi": timi,
            "seed": args.seed, "mi_blocks": args.mi_blocks, "mesh_resolution": args.mesh_resolution,
            "max_faces": args.max_faces, "refine_poses": args.refine_poses, "candidates": args.candidates, **extra}
    return GenerationSettings.from_dict(data)
