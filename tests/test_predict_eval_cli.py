"""`scenewright predict`, `scenewright eval` and the figure script as real subprocesses on dev benchmark cases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scenewright.evaluation.figure import BACKGROUND, PANEL

SMALL_CASES = ("case_004", "case_005")  # two-instance dev cases keep the run short


def scenewright(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scenewright", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.fixture
def cases(shared_dir: Path, tmp_path: Path) -> Path:
    """A cases folder with two dev cases (symlinked) and one broken case."""
    folder = tmp_path / "cases"
    folder.mkdir()
    for name in SMALL_CASES:
        (folder / name).symlink_to(shared_dir / "benchmark" / "dev" / name)
    broken = folder / "case_broken"
    broken.mkdir()
    (broken / "scene.json").write_text((shared_dir / "benchmark" / "dev" / SMALL_CASES[0] / "scene.json").read_text())
    (broken / "image.png").write_bytes(b"not a png")
    (broken / "seg.png").write_bytes(b"not a png")
    return folder


def test_box_baseline_predict_then_eval(cases: Path, tmp_path: Path, shared_dir: Path) -> None:
    pred = tmp_path / "pred"
    run = scenewright("predict", "--cases", str(cases), "--out", str(pred), "--model", "box-baseline", cwd=tmp_path)
    assert run.returncode == 1, run.stderr  # the broken case fails, the others are written
    assert "case_broken" in run.stdout and "2/3" in run.stdout
    assert "case_broken" in json.loads((pred / "predict.json").read_text())["failures"]
    for name in SMALL_CASES:
        scene = json.loads((cases / name / "scene.json").read_text())
        ids = sorted(inst["id"] for inst in scene["instances"])
        assert sorted(int(p.stem) for p in (pred / name).glob("*.ply")) == ids
        camera = json.loads((pred / name / "camera.json").read_text())
        assert set(camera) >= {"resolution", "fov_deg", "matrix_world", "sensor_fit"}
        meta = json.loads((pred / name / "meta.json").read_text())
        assert meta["time_s"] > 0 and meta["peak_mem_mb"] > 0 and meta["device"].startswith("cpu")

    figure = tmp_path / "figure.png"
    run = subprocess.run([sys.executable, "-m", "scenewright.evaluation.figure", "--cases", str(cases), "--pred", str(pred),
                          "--out", str(figure), *[a for name in SMALL_CASES for a in ("--case", name)]],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    image = np.asarray(Image.open(figure).convert("RGB"))
    assert image.shape == (2 * PANEL, 3 * PANEL, 3)
    drawn = (image[:, 2 * PANEL :] != BACKGROUND).any(axis=2)  # the prediction panels
    assert 0.01 < drawn.mean() < 0.9

    (cases / "case_broken").rename(tmp_path / "case_broken")  # eval scores the predicted cases only
    metrics = tmp_path / "metrics.json"
    run = scenewright("eval", "--cases", str(cases), "--pred", str(pred), "--out", str(metrics), "--workers", "2", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    for label in ("CD-S", "F-S", "CD-O", "F-O", "IoU-B", "LCD", "SSR", "Reproj-IoU", "time"):
        assert f"| {label}" in run.stdout
    report = json.loads(metrics.read_text())
    assert report["n_cases"] == 2 and [c["case"] for c in report["cases"]] == list(SMALL_CASES)
    assert report["run"]["settings"]["box_baseline"]["fov_deg"] == pytest.approx(47.5)
    for name in ("cd_s", "f_s", "cd_o", "f_o", "iou_b", "lcd", "ssr", "reproj_iou"):
        assert report["means"][name] is not None
    for case in report["cases"]:
        assert case["ssr"] == 1.0  # one box per mask, none fused
        assert 0.0 < case["f_s"] < 1.0 and 0.0 < case["iou_b"] < 1.0 and 0.0 < case["reproj_iou"] <= 1.0
        assert len(case["instances"]) == case["n_gt"] == 2


def test_model_predict_through_the_pipeline(shared_dir: Path, tmp_path: Path) -> None:
    """Any model folder goes through ScenePipeline; a tiny random model exercises the path end to end."""
    from scenewright.pipeline import make_tiny_random_pipeline

    model = make_tiny_random_pipeline(tmp_path / "tiny")
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / SMALL_CASES[0]).symlink_to(shared_dir / "benchmark" / "dev" / SMALL_CASES[0])
    pred = tmp_path / "pred"
    run = scenewright("predict", "--cases", str(cases), "--out", str(pred), "--model", str(model), "--steps", "2",
                      "--seed", "5", "--mi-blocks", "--mesh-resolution", "32", "--device", "cpu", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    meta = json.loads((pred / SMALL_CASES[0] / "meta.json").read_text())
    assert meta["settings"]["steps"] == 2 and meta["settings"]["seed"] == 5 and meta["settings"]["mi_blocks"] == []
    assert meta["settings"]["model"] == str(model)
    assert (pred / SMALL_CASES[0] / "meta.json").is_file()
