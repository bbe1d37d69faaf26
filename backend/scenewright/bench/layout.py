"""Layout benchmark: the sampler's boxes before any placement, scored as the benchmark's IoU-B, per seed.

Only the model's encode, denoise and decode run (`ScenePipeline.sample_candidates`): no camera solve, no
pose fit, no choice among candidates. One scene per seed, all seeds of a case denoised together, each scene
normalised by its own box as IoU-B is. This separates what the model draws from what the placement makes of
it, over several seeds, in a few seconds a case on the CPU (docs/results.md, "Twelve sampling steps").

    scenewright bench layout ../shared/benchmark/dev --seeds 0,1,2 [--steps 12] [--shift 2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..evaluation.cases import list_cases, load_case
from ..evaluation.metrics import box_iou, normalised_boxes
from ..masks import instances_from_seg
from ..protocol import GenerationSettings


def run_layout(cases_dir: str | Path, model: str = "default", seeds: tuple[int, ...] = (0, 1, 2),
               steps: int | None = None, guidance_scale: float | None = None, shift: float | None = None,
               limit: int | None = None, device: str = "cpu") -> dict[str, Any]:
    """Per seed, the mean IoU-B over all instances of the cases (an instance without a surface scores 0), and
    per case the IoU-B of each seed's scene."""
    import torch

    from ..pipeline import ScenePipeline

    if list(seeds) != list(range(seeds[0], seeds[0] + len(seeds))):
        raise SystemExit(f"--seeds {seeds}: give consecutive seeds (they are one request's candidate scenes)")
    pipe = ScenePipeline.from_pretrained(model, device=device)
    pipe.options.mirrored_share = 0.0  # each seed a sample of the picture itself
    if shift is not None:
        pipe.scheduler.config.shift = shift
    settings = GenerationSettings(seed=seeds[0], candidates=len(seeds), steps=steps, guidance_scale=guidance_scale)
    per_case: dict[str, list[float]] = {}
    totals, instances_total = np.zeros(len(seeds)), 0
    for folder in tqdm(list_cases(cases_dir)[:limit], desc="layout", unit="case"):
        case = load_case(folder)
        image = Image.open(case.image_path).convert("RGB")
        instances = instances_from_seg(case.seg)
        with torch.no_grad():
            views, _ = pipe.sample_candidates(image, instances, settings)
        truth = normalised_boxes({i.id: i.mesh for i in case.instances})
        scores = []
        for view in views:
            boxes = normalised_boxes({i.id: m for i, m in zip(instances, view.meshes) if m is not None})
            scores.append(sum(box_iou(boxes[k], box) for k, box in truth.items() if k in boxes))
        totals += scores
        instances_total += len(truth)
        per_case[folder.name] = [s / len(truth) for s in scores]
    per_seed = (totals / max(instances_total, 1)).tolist()
    return {"model": model, "seeds": list(seeds), "steps": steps or pipe.options.steps,
            "guidance_scale": pipe.options.guidance_scale if guidance_scale is None else guidance_scale,
            "shift": float(pipe.scheduler.config.shift), "cases": len(per_case), "instances": instances_total,
            "iou_b_per_seed": per_seed, "iou_b_mean": float(np.mean(per_seed)), "per_case": per_case}


def format_layout(result: dict[str, Any]) -> str:
    seeds = " / ".join(f"{v:.4f}" for v in result["iou_b_per_seed"])
    return (f"{result['cases']} cases, {result['instances']} instances; {result['steps']} steps, guidance "
            f"{result['guidance_scale']}, shift {result['shift']}\n"
            f"IoU-B of the generated boxes, seeds {result['seeds']}: {seeds} (mean {result['iou_b_mean']:.4f})")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scenewright bench layout", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", type=Path, help="folder of benchmark case folders (with ground-truth meshes)")
    parser.add_argument("--model", default="default", help="'default', a model folder or a hub repo id")
    parser.add_argument("--seeds", default="0,1,2", help="consecutive seeds, comma-separated: one scene each")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    parser.add_argument("--guidance-scale", type=float, default=None, help="(default: the model's)")
    parser.add_argument("--shift", type=float, default=None, help="the scheduler's time shift (default: the model's)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N cases")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda, mps")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    result = run_layout(args.cases, args.model, tuple(int(s) for s in args.seeds.split(",")), args.steps,
                        args.guidance_scale, args.shift, args.limit, args.device)
    print(format_layout(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0
