"""`scenewright eval`: score a prediction folder against benchmark cases with the metrics of PROTOCOL.md section 4."""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .cases import list_cases, load_case, load_prediction
from .metrics import INSTANCE_METRICS, SCENE_METRICS, score_case, summarise

# metric -> (label in the table, True when higher is better)
_TABLE = {
    "cd_s": ("CD-S", False), "f_s": ("F-S", True), "cd_o": ("CD-O", False), "f_o": ("F-O", True),
    "iou_b": ("IoU-B", True), "lcd": ("LCD", False), "ssr": ("SSR", True), "reproj_iou": ("Reproj-IoU", True),
}


def _run_settings(metas: list[dict[str, Any]]) -> dict[str, Any]:
    """Seed/sampler settings and device from the predictions' meta.json: one value when all cases agree, else the distinct ones."""
    out: dict[str, Any] = {}
    for key in ("system", "device", "settings"):
        distinct = [json.loads(v) for v in sorted({json.dumps(m.get(key), sort_keys=True) for m in metas if key in m})]
        if distinct:
            out[key] = distinct[0] if len(distinct) == 1 else distinct
    return out


def _stage_medians(metas: list[dict[str, Any]]) -> dict[str, float]:
    """Median seconds per pipeline stage over the cases whose meta.json has them (predict records `stage_s`)."""
    stages: dict[str, list[float]] = {}
    for meta in metas:
        for stage, seconds in (meta.get("stage_s") or {}).items():
            stages.setdefault(stage, []).append(float(seconds))
    return {stage: float(np.median(values)) for stage, values in stages.items()}


def format_table(report: dict[str, Any]) -> str:
    """The summary table printed at the end of a run (Markdown, so it can go straight into docs)."""
    means = report["means"]
    lines = ["| metric | value |", "|---|---|"]
    for name in SCENE_METRICS[:2] + INSTANCE_METRICS[:3] + SCENE_METRICS[2:] + INSTANCE_METRICS[3:]:
        label, higher = _TABLE[name]
        value = means[name]
        lines.append(f"| {label} {'↑' if higher else '↓'} | {'n/a' if value is None else f'{value:.4f}'} |")
    time_s, mem = report["time_s_median"], report["peak_mem_mb_max"]
    lines.append(f"| time (median s/case) | {'n/a' if time_s is None else f'{time_s:.3f}'} |")
    lines.append(f"| peak memory (MB) | {'n/a' if mem is None else f'{mem:.0f}'} |")
    if report.get("stage_s_median"):
        stages = ", ".join(f"{stage} {seconds:.2f}" for stage, seconds in report["stage_s_median"].items())
        lines.append(f"| stages (median s) | {stages} |")
    for group, values in (report.get("means_by_support") or {}).items():
        shown = ", ".join(f"{_TABLE[name][0]} {'n/a' if values[name] is None else f'{values[name]:.4f}'}"
                          for name in INSTANCE_METRICS)
        lines.append(f"| {group} instances ({values['n_instances']}) | {shown} |")
    for group, values in (report.get("box_error") or {}).items():
        if values["iou_b_with_gt_axis"] is None:
            continue
        triple = lambda name: " / ".join(f"{v:.3f}" for v in values[name])
        lines.append(f"| box error x / y / z, {group} ({values['n_instances']}) | median abs. centre error / size "
                     f"{triple('median_abs_centre_error')}, median abs. log size ratio {triple('median_abs_log_size_ratio')}, "
                     f"IoU-B with that axis from the GT {triple('iou_b_with_gt_axis')}, with the GT centres "
                     f"{values['iou_b_with_gt_centre']:.3f}, with the GT sizes {values['iou_b_with_gt_size']:.3f} |")
    run = report.get("run", {})
    lines.append("")
    lines.append(f"{report['n_cases']} cases, {report['n_instances']} instances; device: {run.get('device', 'n/a')}")
    lines.append(f"system: {run.get('system', 'n/a')}; settings: {json.dumps(run.get('settings'), sort_keys=True)}")
    return "\n".join(lines)


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scenewright eval", description=__doc__.splitlines()[0])
    parser.add_argument("--cases", required=True, type=Path, help="folder of case folders")
    parser.add_argument("--pred", required=True, type=Path, help="prediction folder PRED with PRED/<case>/<k>.ply")
    parser.add_argument("--out", required=True, type=Path, help="metrics JSON to write")
    parser.add_argument("--limit", type=int, default=None, help="only the first N cases")
    parser.add_argument("--workers", type=int, default=1, help="cases scored in parallel processes (results do not change)")
    return parser.parse_args(argv)


def _score(case_dir: Path, pred_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics, meta.json) of one case; module-level so worker processes can run it."""
    prediction = load_prediction(pred_dir / case_dir.name)
    return score_case(load_case(case_dir), prediction), prediction.meta


def main(argv: list[str]) -> int:
    args = _parse_args(argv)
    cases = list_cases(args.cases)[: args.limit]
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) if args.workers > 1 else nullcontext() as pool:
        mapper = pool.map if pool is not None else map
        scored = mapper(_score, cases, [args.pred] * len(cases))
        results = list(tqdm(scored, total=len(cases), desc="eval", unit="case", file=sys.stderr))
    per_case, metas = [r[0] for r in results], [r[1] for r in results]
    report = summarise(per_case)
    report["stage_s_median"] = _stage_medians(metas)
    report["run"] = _run_settings(metas)
    report["cases_dir"], report["pred_dir"] = str(args.cases), str(args.pred)
    report["eval_seconds"] = time.perf_counter() - start
    report["cases"] = per_case
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(format_table(report))
    missing = [c["case"] for c in per_case if c["errors"]]
    if missing:
        print(f"cases with prediction problems (scored as empty where files were missing): {missing}")
    return 0
