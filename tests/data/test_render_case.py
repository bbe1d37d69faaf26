"""A real Blender (bpy, Cycles) render of one small case, in a subprocess: a valid benchmark case."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image
from scipy import ndimage

from scenewright.camera import Camera, render_silhouettes

pytestmark = pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="needs bpy")  # never imported here

SEED, RES = 4, 96  # seed 4: a desk (table, monitor and lamp on it, chair)
RENDER = (
    "import json, sys; from pathlib import Path\n"
    "from scenewright.data.scenes import sample_scene\n"
    "from scenewright.data.render import render_case\n"
    "entry = render_case(sample_scene(int(sys.argv[2]), int(sys.argv[3])), Path(sys.argv[1]), samples=2)\n"
    "Path(sys.argv[1], '..', 'entry.json').write_text(json.dumps(entry))\n"
)


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("render") / "case"
    proc = subprocess.run([sys.executable, "-c", RENDER, str(out), str(SEED), str(RES)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_case_files_and_scene_json(case: Path) -> None:
    scene = json.loads((case / "scene.json").read_text())
    assert scene["format"] == "scene-case/1"
    assert set(scene["camera"]) == {"resolution", "sensor_fit", "fov_deg", "matrix_world"}
    assert scene["camera"]["resolution"] == [RES, RES] and scene["camera"]["sensor_fit"] == "AUTO"
    assert 35.0 <= scene["camera"]["fov_deg"] <= 60.0
    assert np.asarray(scene["camera"]["matrix_world"]).shape == (4, 4)
    assert scene["ground_z"] == 0.0
    ids = [inst["id"] for inst in scene["instances"]]
    assert ids == list(range(1, len(ids) + 1)) and 2 <= len(ids) <= 8
    for inst in scene["instances"]:
        assert inst["mesh"] == f"instances/{inst['id']}.ply" and (case / inst["mesh"]).is_file()
        assert inst["support"] is None or inst["support"] in ids
    assert any(inst["support"] is not None for inst in scene["instances"])
    image = Image.open(case / "image.png")
    assert image.mode == "RGB" and image.size == (RES, RES)
    seg = Image.open(case / "seg.png")
    assert seg.mode == "L" and seg.size == (RES, RES)
    entry = json.loads((case.parent / "entry.json").read_text())
    assert entry["n"] == len(ids) and entry["labels"] == [inst["label"] for inst in scene["instances"]]


def test_seg_ids_match_instances_and_meshes_project_onto_them(case: Path) -> None:
    scene = json.loads((case / "scene.json").read_text())
    seg = np.asarray(Image.open(case / "seg.png"))
    ids = [inst["id"] for inst in scene["instances"]]
    assert set(np.unique(seg).tolist()) == {0, *ids}
    camera = Camera.from_dict(scene["camera"])
    meshes = [trimesh.load(case / inst["mesh"], process=False) for inst in scene["instances"]]
    for mesh in meshes:
        assert mesh.is_watertight and mesh.bounds[0, 2] >= scene["ground_z"] - 1e-3
    sils = render_silhouettes([(m.vertices, m.faces) for m in meshes], camera)
    for k, sil in zip(ids, sils):
        pixels = seg == k
        # every pixel labelled k lies on mesh k's projection (1 px slack for sampling at the edges) ...
        assert (pixels & ~ndimage.binary_dilation(sil)).sum() <= 0.01 * pixels.sum()
        # ... and no pixel well inside that projection is background
        assert (ndimage.binary_erosion(sil) & (seg == 0)).sum() <= 0.01 * sil.sum()


def test_image_is_a_lit_blockout_on_a_light_background(case: Path) -> None:
    image = np.asarray(Image.open(case / "image.png")).astype(np.float64)
    seg = np.asarray(Image.open(case / "seg.png"))
    background = image[seg == 0]
    assert background.mean() > 110  # light ground and sky
    for k in np.unique(seg)[1:]:
        # objects differ from the background colour: they have their own diffuse colour and shading
        assert np.abs(image[seg == k].mean(axis=0) - background.mean(axis=0)).max() > 3 or image[seg == k].std() > 5
