"""`scenewright make-data`: real Blender workers; deterministic per case; resume skips finished cases."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from scenewright.data.generate import case_name, main

pytestmark = pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="needs bpy")  # never imported here

ARGS = ["--count", "3", "--seed", "5", "--workers", "1", "--resolution", "48", "--samples", "1"]


def _scene(case: Path) -> dict:
    scene = json.loads((case / "scene.json").read_text())
    scene["index_entry"].pop("render_s")  # wall time: the one field that may differ between runs
    return scene


def _stamp(case: Path) -> dict[str, int]:
    return {str(p.relative_to(case)): p.stat().st_mtime_ns for p in sorted(case.rglob("*")) if p.is_file()}


def test_make_data_is_resumable_and_deterministic(tmp_path: Path) -> None:
    out = tmp_path / "data"
    assert main(["--out", str(out), *ARGS]) == 0
    cases = [out / case_name(i) for i in range(3)]
    for case in cases:
        assert {p.name for p in case.iterdir()} == {"image.png", "seg.png", "scene.json", "instances"}
    index = json.loads((out / "INDEX.json").read_text())
    assert index["format"] == "scene-case-index/1" and index["n_cases"] == 3
    assert [c["case"] for c in index["cases"]] == [c.name for c in cases]
    assert index["n_instances"] == sum(len(json.loads((c / "scene.json").read_text())["instances"]) for c in cases)

    kept = _stamp(cases[0])
    first_scene = _scene(cases[1])
    # simulate an interrupted run: case 1 lost, case 2 half written (no scene.json), a stale temp folder
    for p in sorted(cases[1].rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    cases[1].rmdir()
    (cases[2] / "scene.json").unlink()
    (out / ".tmp_case_000002_12345").mkdir()
    (out / ".tmp_case_000002_12345" / "image.png").write_bytes(b"partial")

    assert main(["--out", str(out), *ARGS]) == 0
    assert _stamp(cases[0]) == kept  # finished case untouched
    assert _scene(cases[1]) == first_scene  # re-made identically from (seed, index)
    assert (cases[2] / "scene.json").is_file() and (cases[2] / "seg.png").is_file()
    assert not list(out.glob(".tmp_*"))
    assert json.loads((out / "INDEX.json").read_text())["n_cases"] == 3


def test_a_failing_case_is_reported_and_the_others_finish(tmp_path: Path, capsys) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / case_name(1)).write_text("a file where the case folder must go")  # case 1 cannot be put in place
    args = ["--out", str(out), "--count", "2", "--workers", "2", "--resolution", "32", "--samples", "1"]
    assert main(args) == 1
    assert "case_000001 failed" in capsys.readouterr().err
    assert (out / case_name(0) / "scene.json").is_file()
    assert json.loads((out / "INDEX.json").read_text())["n_cases"] == 1
    (out / case_name(1)).unlink()
    assert main(args) == 0  # the next run retries it
    assert json.loads((out / "INDEX.json").read_text())["n_cases"] == 2


def test_varied_props_reach_the_workers(tmp_path: Path) -> None:
    from scenewright.data.generate import case_seed
    from scenewright.data.scenes import VARIED_PROPS, sample_scene

    out = tmp_path / "data"
    assert main(["--out", str(out), *ARGS[:1], "1", *ARGS[2:], "--props", "varied"]) == 0
    scene = json.loads((out / case_name(0) / "scene.json").read_text())
    assert scene["index_entry"]["props"] == "varied"
    seed = case_seed(5, 0, scene["index_entry"]["attempt"])
    varied, plain = sample_scene(seed, 48, props=VARIED_PROPS), sample_scene(seed, 48)

    def matrices(s):
        return [np.round(o.matrix_world, 6).tolist() for o in s.objects]

    assert matrices(varied) != matrices(plain)  # this case tells the two rules apart
    assert all(np.round(i["matrix_world"], 6).tolist() in matrices(varied) for i in scene["instances"])
