"""`scenewright bench train-step RUN`: seconds per step of the default recipe's DiT stage on this machine.

Runs the recipe's DiT stage (settings from RUN/recipe.json, else the defaults) on RUN's data and
codec for --warmup + --steps steps into a temporary folder, and times the last --steps from the
trainer's own log: the figure that decides the recipe's total time (9000 steps), without a run.

    scenewright bench train-step /work/run --steps 40 --json docs/bench/train_step_cpu.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from ..settings_cli import on_off


def run_train_step(run: Path, steps: int, warmup: int, threads: int, cpu_bf16: bool | None = None) -> dict[str, Any]:
    """Time `steps` DiT training steps after `warmup` on RUN's data; nothing is written into RUN."""
    import torch

    from ..training.recipe import RECIPE_FILE, RecipeConfig, dit_config, saved_recipe
    from ..training.train import build_trainer

    saved = run / RECIPE_FILE
    recipe = saved_recipe(saved) if saved.exists() else RecipeConfig()
    if cpu_bf16 is not None:
        recipe.cpu_bf16 = cpu_bf16
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = dit_config(run, recipe)
            cfg.out, cfg.steps, cfg.log_every, cfg.checkpoint_every = tmp, warmup + steps, 1, 10**9
            cfg.stage_dir.mkdir(parents=True)
            build_trainer(cfg).train()  # its one checkpoint, after the last logged step, goes with the folder
            log = [json.loads(line) for line in (cfg.stage_dir / "log.jsonl").read_text().splitlines()]
    finally:
        torch.set_num_threads(previous)
    start = log[warmup - 1]["seconds"] if warmup > 0 else 0.0
    seconds = (log[-1]["seconds"] - start) / steps
    return {"run": str(run), "steps": steps, "warmup": warmup, "threads": threads, "cpu_bf16": recipe.cpu_bf16,
            "batch_size": recipe.batch_size, "seconds_per_step": round(seconds, 4),
            "recipe_steps": recipe.steps, "dit_stage_seconds": round(seconds * recipe.steps, 1)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scenewright bench train-step", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a recipe run folder whose data and codec stages are done")
    parser.add_argument("--steps", type=int, default=40, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the recipe's default)")
    parser.add_argument("--cpu-bf16", type=on_off, default=None, help="override the run's setting (on/off)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be at least 1 and --warmup at least 0")
    for needed in ("data", "codec"):
        if not (args.run / needed).is_dir():
            parser.error(f"{args.run / needed} is missing: run the recipe's data and codec stages first")
    result = run_train_step(args.run, args.steps, args.warmup, args.threads, args.cpu_bf16)
    print(f"{result['seconds_per_step']:.3f} s a step ({args.steps} steps after {args.warmup}, {args.threads} threads, "
          f"cpu_bf16 {'on' if result['cpu_bf16'] else 'off'}): the DiT stage's {result['recipe_steps']} steps "
          f"about {result['dit_stage_seconds']:.0f} s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0
