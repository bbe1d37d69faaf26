"""Checks that a folder is a valid benchmark case (PROTOCOL.md section 1), shared by the data tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image
from scipy import ndimage

from scenewright.camera import Camera, render_silhouettes
from scenewright.evaluation.cases import load_case


def assert_valid_case(case: Path) -> dict:
    """Files, scene.json fields, exact seg ids, and GT meshes that project onto their seg regions."""
    scene = json.loads((case / "scene.json").read_text())
    assert scene["format"] == "scene-case/1"
    cam = scene["camera"]
    assert set(cam) == {"resolution", "sensor_fit", "fov_deg", "matrix_world"}
    assert cam["sensor_fit"] == "AUTO" and 35.0 <= cam["fov_deg"] <= 60.0
    assert np.asarray(cam["matrix_world"]).shape == (4, 4)
    assert scene["ground_z"] == 0.0
    ids = [inst["id"] for inst in scene["instances"]]
    assert ids == list(range(1, len(ids) + 1)) and 2 <= len(ids) <= 8
    for inst in scene["instances"]:
        assert inst["mesh"] == f"instances/{inst['id']}.ply" and (case / inst["mesh"]).is_file()
        assert inst["support"] is None or inst["support"] in ids
        assert isinstance(inst["label"], str)

    width, height = cam["resolution"]
    image = Image.open(case / "image.png")
    assert image.mode == "RGB" and image.size == (width, height)
    seg_image = Image.open(case / "seg.png")
    assert seg_image.mode == "L" and seg_image.size == (width, height)
    seg = np.asarray(seg_image)
    assert set(np.unique(seg).tolist()) == {0, *ids}

    camera = Camera.from_dict(cam)
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

    loaded = load_case(case)  # the evaluator reads it
    assert [inst.id for inst in loaded.instances] == ids
    return scene
