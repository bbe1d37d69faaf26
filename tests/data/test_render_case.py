"""A real Blender (bpy, Cycles) render of one small case, in a subprocess: a valid benchmark case."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from casekit import assert_valid_case
from PIL import Image

from scenewright.data.scenes import sample_scene

pytestmark = pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="needs bpy")  # never imported here

RES = 96
RENDER = (
    "import json, sys; from pathlib import Path\n"
    "from scenewright.data.scenes import sample_scene\n"
    "from scenewright.data.render import render_case\n"
    "entry = render_case(sample_scene(int(sys.argv[2]), int(sys.argv[3])), Path(sys.argv[1]), samples=2)\n"
    "Path(sys.argv[1], '..', 'entry.json').write_text(json.dumps(entry))\n"
)


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> Path:
    # a desk: a monitor resting on a table, big enough to stay visible at this size
    seed = next(s for s in range(1000) if sample_scene(s, RES).style == "desk")
    out = tmp_path_factory.mktemp("render") / "case"
    proc = subprocess.run([sys.executable, "-c", RENDER, str(out), str(seed), str(RES)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_render_makes_a_valid_case(case: Path) -> None:
    scene = assert_valid_case(case)
    assert scene["camera"]["resolution"] == [RES, RES]
    assert any(inst["support"] is not None for inst in scene["instances"])
    entry = json.loads((case.parent / "entry.json").read_text())
    assert entry["n"] == len(scene["instances"]) and entry["labels"] == [i["label"] for i in scene["instances"]]
    seg = np.asarray(Image.open(case / "seg.png"))
    assert [i["pixels"] for i in entry["instances"]] == [int((seg == i["id"]).sum()) for i in entry["instances"]]


def test_image_is_a_lit_blockout_on_a_light_background(case: Path) -> None:
    image = np.asarray(Image.open(case / "image.png")).astype(np.float64)
    seg = np.asarray(Image.open(case / "seg.png"))
    background = image[seg == 0]
    assert background.mean() > 110  # light ground and sky
    objects = image[seg > 0]
    # the objects carry their own diffuse colours: the image is not one flat grey
    assert np.abs(objects.mean(axis=0) - background.mean(axis=0)).max() > 5 or objects.std(axis=0).max() > 10
