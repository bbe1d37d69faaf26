"""`scenewright make-data`: render many procedural blockout cases with Blender worker processes.

Case i is a pure function of (seed, i), so any subset can be (re)made anywhere
and a run can be stopped and resumed: finished cases (their final folder
exists) are skipped, half-written ones (temporary folders) are redone. Only
the spawned workers import bpy, once each, and render many cases.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from .scenes import PROP_RULES, sample_scene

INDEX_FORMAT = "scene-case-index/1"
GENERATOR = "scenewright-make-data/1"
MAX_ATTEMPTS = 20
_TMP_PREFIX = ".tmp_"


def case_name(index: int) -> str:
    return f"case_{index:06d}"


def case_seed(seed: int, index: int, attempt: int = 0) -> int:
    """The scene seed of case `index`, attempt `attempt` (a rejected scene is replaced by the next attempt)."""
    return int(np.random.SeedSequence([seed, index, attempt]).generate_state(1)[0])


def make_case(out: Path, seed: int, index: int, resolution: int, samples: int, threads: int, split: str,
              hard: bool = False, props: str = "default") -> dict:
    """Render case `index` into a temporary folder, then rename it into place; returns its INDEX entry."""
    from . import render  # bpy: imported in worker processes only

    final = out / case_name(index)
    tmp = out / f"{_TMP_PREFIX}{case_name(index)}_{os.getpid()}"
    for attempt in range(MAX_ATTEMPTS):
        shutil.rmtree(tmp, ignore_errors=True)
        scene = sample_scene(case_seed(seed, index, attempt), resolution, hard=hard, props=PROP_RULES[props])
        try:
            entry = render.render_case(scene, tmp, samples, threads)
        except render.SceneRejected:
            continue
        entry = {"case": final.name, "split": split, **entry, "attempt": attempt, "props": props}
        meta_path = tmp / "scene.json"
        case = json.loads(meta_path.read_text())
        case["split"] = split
        case["index_entry"] = entry  # lets INDEX.json be rebuilt from the case folders alone
        meta_path.write_text(json.dumps(case, indent=2))
        shutil.rmtree(final, ignore_errors=True)  # a folder without scene.json is unfinished
        os.replace(tmp, final)
        return entry
    raise RuntimeError(f"case {index}: no valid scene in {MAX_ATTEMPTS} attempts")


def _quiet_worker() -> None:
    """Blender prints a line per render tile to the C-level stdout; keep the progress bar readable."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


def _run_one(job: tuple) -> tuple[int, str | None]:
    """One case in a worker; a failure is reported, not raised, so one bad case cannot stop a long run."""
    try:
        make_case(*job)
        return job[2], None
    except Exception as exc:  # noqa: BLE001 - reported per case, retried by the next run
        return job[2], f"{type(exc).__name__}: {exc}"


def pending_cases(out: Path, count: int, start: int = 0) -> list[int]:
    """Indices in [start, start+count) without a finished case folder; clears half-written folders."""
    for stale in out.glob(f"{_TMP_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    return [i for i in range(start, start + count) if not (out / case_name(i) / "scene.json").is_file()]


def write_index(out: Path) -> dict[str, Any]:
    """INDEX.json over every finished case in `out`, like the benchmark's dev set index."""
    cases = []
    for scene_json in sorted(out.glob("case_*/scene.json")):
        entry = json.loads(scene_json.read_text()).get("index_entry")
        if entry is not None:
            cases.append(entry)
    labels = Counter(label for c in cases for label in c["labels"])
    tags = Counter(tag for c in cases for tag in c["tags"])
    index = {
        "format": INDEX_FORMAT,
        "generator": GENERATOR,
        "n_cases": len(cases),
        "n_instances": sum(c["n"] for c in cases),
        "histogram_instances_per_case": {str(k): v for k, v in sorted(Counter(c["n"] for c in cases).items())},
        "histogram_labels": dict(labels.most_common()),
        "histogram_tags": dict(tags.most_common()),
        "cases": cases,
    }
    (out / "INDEX.json").write_text(json.dumps(index, indent=1))
    return index


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scenewright make-data", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="output folder (created; resumable)")
    p.add_argument("--count", type=int, required=True, help="number of cases")
    p.add_argument("--start", type=int, default=0, help="first case index (to split a run across machines)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed: case i depends only on (seed, i)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="Blender worker processes")
    p.add_argument("--threads", type=int, default=1, help="render threads per worker")
    p.add_argument("--resolution", type=int, default=512, help="square image side in pixels")
    p.add_argument("--samples", type=int, default=8, help="Cycles samples per pixel (denoised)")
    p.add_argument("--split", default="train", help="split name written into scene.json and INDEX.json")
    p.add_argument("--hard", action="store_true", help="only the protocol's harder arrangements (clusters, stacked "
                   "props, occluding rows) with cameras from its full ranges: a hard held-out split")
    p.add_argument("--props", choices=sorted(PROP_RULES), default="default",
                   help="what props rest on and their sizes: default (the default model's training scenes), or "
                   "varied (on beds, boxes and cylinders too, and smaller: the pose head's extra scenes)")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if importlib.util.find_spec("bpy") is None:  # checked here, imported only by the workers
        print("make-data needs Blender's Python module: pip install 'scenewright[blender]' (bpy==5.0.1)", file=sys.stderr)
        return 2
    from tqdm import tqdm

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    todo = pending_cases(out, args.count, args.start)
    done = args.count - len(todo)
    print(f"make-data: {done} of {args.count} cases already done, {len(todo)} to render", file=sys.stderr)
    jobs = [(out, args.seed, i, args.resolution, args.samples, args.threads, args.split, args.hard, args.props)
            for i in todo]
    start = time.perf_counter()
    failed: list[tuple[int, str]] = []
    if jobs:
        workers = max(1, min(args.workers, len(jobs)))
        # A worker that dies (a Blender crash) breaks the executor: the run stops loudly and can be resumed.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_quiet_worker) as pool:
            futures = [pool.submit(_run_one, job) for job in jobs]
            for future in tqdm(as_completed(futures), total=len(jobs), unit="case", file=sys.stderr):
                index_, error = future.result()
                if error is not None:
                    failed.append((index_, error))
                    tqdm.write(f"make-data: {case_name(index_)} failed: {error}", file=sys.stderr)
    elapsed = time.perf_counter() - start
    index = write_index(out)
    if jobs:
        rate = len(jobs) / elapsed * 3600.0
        print(f"make-data: {len(jobs)} cases in {elapsed:.1f} s ({elapsed / len(jobs):.2f} s/case, "
              f"{rate:.0f} cases/hour "
              f"with {args.workers} workers)", file=sys.stderr)
    print(f"make-data: {index['n_cases']} cases, {index['n_instances']} instances in {out}", file=sys.stderr)
    if failed:
        print(f"make-data: {len(failed)} cases failed (run again to retry them)", file=sys.stderr)
        return 1
    return 0
