"""`scenewright bench extraction|sampler|placement|layout|reference|train-step`: print a table, optionally write the numbers as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..protocol import GUIDANCE_METHODS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scenewright bench", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    ext = sub.add_parser("extraction", help="analytic scene: dense vs coarse-to-fine mesh extraction")
    ext.add_argument("--resolution", type=int, default=256, help="marching-cubes cells per axis")
    ext.add_argument("--coarse-resolution", type=int, default=None)
    ext.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    sub.add_parser("placement", add_help=False,
                   help="camera solve, ground and contacts on benchmark cases with GT meshes "
                        "(options: scenewright bench placement --help)")
    sub.add_parser("layout", add_help=False,
                   help="the sampler's boxes before placement (IoU-B per seed) on benchmark cases "
                        "(options: scenewright bench layout --help)")
    sub.add_parser("reference", add_help=False,
                   help="MIDI-3D's reference pipeline against ours, stage by stage "
                        "(options: scenewright bench reference --help)")
    sub.add_parser("train-step", add_help=False,
                   help="seconds per DiT training step of the default recipe on a run's data "
                        "(options: scenewright bench train-step --help)")
    smp = sub.add_parser("sampler", help="encode / denoise / decode seconds and peak memory, random weights")
    smp.add_argument("--config", choices=("small", "full"), default="small")
    smp.add_argument("--instances", default="1,3,5,8", help="comma-separated instance counts")
    smp.add_argument("--steps", type=int, default=50)
    smp.add_argument("--guidance-scale", type=float, default=7.0)
    smp.add_argument("--guidance", choices=GUIDANCE_METHODS, default="cfg",
                     help="cfg, or timi: CFG plus TIMI's instance guidance at its default settings (docs/guidance.md)")
    smp.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    smp.add_argument("--dtype", default=None, help="fp32, fp16, bf16 (default: bf16 on CUDA, else fp32)")
    smp.add_argument("--resolution", type=int, default=None, help="mesh cells per axis (default: the preset's)")
    smp.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    smp.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    return parser


def main(argv: list[str]) -> int:
    if argv[:1] == ["placement"]:  # its own parser (cases folder, --out, perturbations)
        from .placement import main as placement_main

        return placement_main(argv[1:])
    if argv[:1] == ["layout"]:
        from .layout import main as layout_main

        return layout_main(argv[1:])
    if argv[:1] == ["reference"]:
        from .reference import main as reference_main

        return reference_main(argv[1:])
    if argv[:1] == ["train-step"]:
        from .train_step import main as train_step_main

        return train_step_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.what == "extraction":
        from .extraction import format_extraction, run_extraction

        result = run_extraction(args.resolution, args.coarse_resolution)
        print(format_extraction(result))
    else:
        import torch

        from .sampler import format_sampler, run_sampler

        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads or threads)
        try:
            with torch.no_grad():  # not inference_mode: TIMI takes gradients inside the sampler
                result = run_sampler(
                    args.config, tuple(int(n) for n in args.instances.split(",")), args.steps, args.guidance_scale,
                    args.device, args.dtype, args.resolution, args.guidance,
                )
        finally:
            torch.set_num_threads(threads)  # main() may run inside another program (tests)
        print(format_sampler(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0
