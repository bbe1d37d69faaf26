"""Small real inputs for the training tests: procedural scenes written as PROTOCOL.md case folders.

The image is flat-shaded with the project's silhouette rasteriser instead of
Blender (nearer objects painted last, so they occlude), which keeps these
tests free of bpy and of ../shared while reading cases through the case format.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from scenewright.camera import render_silhouettes
from scenewright.data.scenes import sample_scene

CASE_SIZES = (2, 3, 3)  # instances of case_000, case_001, case_002


def write_case(folder: Path, count: int, first_seed: int = 0, resolution: int = 128) -> Path:
    """The first `count` objects of the first scene from `first_seed` on that has that many
    -> image.png, seg.png, scene.json, instances/k.ply."""
    seed = first_seed
    while len(sample_scene(seed, resolution=resolution).objects) < count:
        seed += 1
    scene = sample_scene(seed, resolution=resolution)
    objects = scene.objects[:count]
    meshes = [o.world_mesh() for o in objects]
    camera = scene.camera
    silhouettes = render_silhouettes([(np.asarray(m.vertices), np.asarray(m.faces)) for m in meshes], camera)
    depth = [camera.project(np.asarray(m.centroid)[None])[1][0] for m in meshes]
    image = np.full((resolution, resolution, 3), 235, dtype=np.uint8)
    seg = np.zeros((resolution, resolution), dtype=np.uint8)
    for index in np.argsort(depth)[::-1]:  # far to near
        image[silhouettes[index]] = (np.asarray(objects[index].color) ** (1 / 2.2) * 255).astype(np.uint8)
        seg[silhouettes[index]] = index + 1
    (folder / "instances").mkdir(parents=True)
    Image.fromarray(image).save(folder / "image.png")
    Image.fromarray(seg).save(folder / "seg.png")
    instances = []
    for index, (obj, mesh) in enumerate(zip(objects, meshes)):
        mesh.export(folder / "instances" / f"{index + 1}.ply")
        instances.append({"id": index + 1, "label": obj.label, "mesh": f"instances/{index + 1}.ply", "support": None,
                          "matrix_world": np.asarray(obj.matrix_world).tolist()})
    scene_json = {"format": "scene-case/1", "camera": camera.to_dict(), "instances": instances, "ground_z": 0.0}
    (folder / "scene.json").write_text(json.dumps(scene_json))
    return folder
