"""`scenewright predict`: run a system over benchmark cases and write PRED/<case>/ as PROTOCOL.md section 3 asks.

The system sees image.png and seg.png only. Per case it records wall time
from reading the image to having all meshes, and peak memory: resident memory
for the CPU (the kernel's high-water mark, reset before each case), allocated
memory for a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..masks import instances_from_seg, seg_to_gray
from ..protocol import GenerationSettings, SettingsError
from ..settings_cli import add_generation_arguments, settings_from_args
from .cases import Mesh, list_cases, write_prediction

BOX_BASELINE = "box-baseline"


@dataclass
class SystemOutput:
    meshes: dict[int, Mesh | None]  # instance id -> mesh in the view frame, None when empty
    camera: dict[str, Any] | None  # scene.json-style camera in the meshes' frame, or None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per pipeline stage, when the system has stages


@dataclass
class System:
    name: str
    device: str  # "cpu", "cuda", "cuda:0", "mps"
    run: Callable[[Image.Image, np.ndarray], SystemOutput]
    settings: dict[str, Any]


def box_baseline_system() -> System:
    from .box_baseline import BoxBaselineConfig, predict_boxes

    config = BoxBaselineConfig()

    def run(image: Image.Image, seg: np.ndarray) -> SystemOutput:
        meshes, camera = predict_boxes(seg, config)
        return SystemOutput(dict(meshes), camera.to_dict())

    return System(BOX_BASELINE, "cpu", run, {"box_baseline": vars(config)})


def pipeline_system(source: str, settings: GenerationSettings, device: str) -> System:
    """A model (`default`, a folder or a hub id) through ScenePipeline; its scene frame is the view frame up to origin and scale."""
    from ..pipeline import ScenePipeline

    pipe = ScenePipeline.from_pretrained(source, device=device)

    def run(image: Image.Image, seg: np.ndarray) -> SystemOutput:
        result = pipe.generate(image, instances_from_seg(seg), settings)
        meshes: dict[int, Mesh | None] = {
            inst.id: None if inst.empty else (inst.scene_vertices().astype(np.float64), np.asarray(inst.faces, np.int64))
            for inst in result.instances
        }
        return SystemOutput(meshes, result.camera, dict(result.timings))

    # None in the settings means the model's default, recorded beside them.
    return System(source, str(pipe.device), run, {**settings.to_dict(), "model_defaults": pipe.options.to_dict()})


def describe_device(device: str) -> str:
    """The device named for the timing report, e.g. 'cpu (AMD EPYC, 2 cores)' or 'cuda (NVIDIA H100 ...)'."""
    if device.startswith("cuda"):
        import torch

        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip() + ", "
                break
    except OSError:
        pass
    return f"{device} ({model}{os.cpu_count()} cores)"


class PeakMemory:
    """Peak memory of one case: GPU allocated memory, or the process's resident high-water mark."""

    def __init__(self, device: str):
        self.device = device

    def reset(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.reset_peak_memory_stats()
            return
        try:  # "5" resets VmHWM (Linux); without it the mark covers the whole run so far
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass

    def peak_mb(self) -> float:
        if self.device.startswith("cuda"):
            import torch

            return torch.cuda.max_memory_allocated() / 2**20
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
        except OSError:
            pass
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scenewright predict", description=__doc__.splitlines()[0])
    parser.add_argument("--cases", required=True, type=Path, help="folder of case folders (image.png, seg.png, ...)")
    parser.add_argument("--out", required=True, type=Path, help="prediction folder PRED; writes PRED/<case>/")
    parser.add_argument("--model", default="default", help=f"'{BOX_BASELINE}', 'default', a model folder or a hub repo id")
    add_generation_arguments(parser)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    parser.add_argument("--limit", type=int, default=None, help="only the first N cases")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = _parse_args(argv)
    try:
        settings = settings_from_args(args, model=args.model)
        cases = list_cases(args.cases)[: args.limit]
    except (SettingsError, FileNotFoundError) as exc:
        print(f"scenewright predict: {exc}", file=sys.stderr)
        return 2
    system = box_baseline_system() if args.model == BOX_BASELINE else pipeline_system(args.model, settings, args.device)
    device_name = describe_device(system.device)
    memory = PeakMemory(system.device)
    failures: dict[str, str] = {}
    for case in tqdm(cases, desc=f"predict {system.name}", unit="case", file=sys.stderr):
        try:
            memory.reset()
            start = time.perf_counter()
            image = Image.open(case / "image.png").convert("RGB")
            seg = seg_to_gray(Image.open(case / "seg.png"))
            output = system.run(image, seg)
            elapsed = time.perf_counter() - start
            meta = {"time_s": elapsed, "peak_mem_mb": memory.peak_mb(), "device": device_name,
                    "system": system.name, "settings": system.settings, "stage_s": output.timings}
            write_prediction(args.out / case.name, output.meshes, output.camera, meta)
        except Exception as exc:  # one failing case must not stop the run; it is reported below
            failures[case.name] = f"{type(exc).__name__}: {exc}"
            tqdm.write(f"{case.name}: failed: {failures[case.name]}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"system": system.name, "device": device_name, "settings": system.settings,
               "n_cases": len(cases), "failures": failures}
    (args.out / "predict.json").write_text(json.dumps(summary, indent=2))
    print(f"predicted {len(cases) - len(failures)}/{len(cases)} cases into {args.out}" + (f"; failed: {sorted(failures)}" if failures else ""))
    return 1 if failures else 0
