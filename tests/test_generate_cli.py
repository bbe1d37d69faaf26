"""`scenewright generate` as a user runs it: a real subprocess, real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import trimesh

from scenewright.pipeline import make_tiny_random_pipeline
from scenewright.protocol import ResultManifest

EXAMPLE = Path(__file__).resolve().parents[1] / "backend" / "scenewright" / "assets" / "examples" / "desk"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scenewright", "generate", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_random_pipeline(tmp_path_factory.mktemp("model") / "tiny")


def test_generate_writes_glb_and_manifest(tiny_model: Path, tmp_path: Path) -> None:
    proc = _run("--image", str(EXAMPLE / "image.png"), "--seg", str(EXAMPLE / "seg.png"), "--out", str(tmp_path),
                "--model", str(tiny_model), "--device", "cpu", "--mesh-resolution", "32", "--scene-size", "3")
    assert proc.returncode == 0, proc.stderr
    manifest = ResultManifest.from_dict(json.loads((tmp_path / "result.json").read_text()))
    scene_ids = [inst["id"] for inst in json.loads((EXAMPLE / "scene.json").read_text())["instances"]]
    assert [inst.id for inst in manifest.instances] == scene_ids
    glb = trimesh.load(tmp_path / "result.glb", force="scene")
    placed = {inst.node for inst in manifest.instances if not inst.empty}
    assert placed and placed == set(glb.graph.nodes_geometry)
    assert manifest.camera is not None and manifest.settings["scene_size_m"] == 3.0
    assert "wrote" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--model", "/nonexistent/model"], "neither a folder nor a hub repo id"),
    (["--steps", "0"], "steps must be between"),
])
def test_generate_errors_are_messages(args: list[str], message: str, tmp_path: Path) -> None:
    proc = _run("--image", str(EXAMPLE / "image.png"), "--seg", str(EXAMPLE / "seg.png"), "--out", str(tmp_path), *args)
    assert proc.returncode in (1, 2)
    assert message in proc.stderr and "Traceback" not in proc.stderr
