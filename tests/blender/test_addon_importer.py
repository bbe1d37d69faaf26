"""The importer on a result written by the backend's own exporter: objects, origins, placement, camera."""

from __future__ import annotations

import math

import numpy as np
import pytest
import trimesh
from PIL import Image

from scenewright.camera import Camera
from scenewright.export import export_result
from scenewright.pipeline import GeneratedInstance, GenerationResult
from scenewright.protocol import GenerationSettings

JOB_ID = "0123456789abcdef0123456789abcdef"


def _rotation_z(degrees: float, translation: tuple[float, float, float]) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    matrix = np.eye(4)
    matrix[:2, :2] = [[c, -s], [s, c]]
    matrix[:3, 3] = translation
    return matrix


def _write_result(folder, resolution):
    table = trimesh.creation.box(extents=(2.0, 1.0, 0.8))
    table.apply_translation((0, 0, 0.4))  # bottom centre at the origin, as the protocol promises
    lamp = trimesh.creation.cylinder(radius=0.2, height=0.6)  # centred at the origin: the importer must fix that
    instances = [
        GeneratedInstance(1, "table", table.vertices.astype(np.float32), table.faces.astype(np.int32),
                          _rotation_z(30, (1.0, 2.0, 0.0))),
        GeneratedInstance(2, None, lamp.vertices.astype(np.float32), lamp.faces.astype(np.int32),
                          _rotation_z(-45, (-1.0, 0.5, 1.1))),
        GeneratedInstance(3, "ghost", np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32)),
    ]
    camera_matrix = np.array([[1.0, 0, 0, 0.3], [0, 0.6, -0.8, -6.0], [0, 0.8, 0.6, 4.0], [0, 0, 0, 1]])
    camera = {"resolution": list(resolution), "sensor_fit": "AUTO", "fov_deg": 50.0, "matrix_world": camera_matrix.tolist()}
    result = GenerationResult(instances, GenerationSettings(seed=42, steps=3), {"name": "view"}, camera=camera,
                              supports={1: None, 2: None, 3: None})
    export_result(result, folder, JOB_ID, model="tiny")
    return instances, camera


IMPORT_SCRIPT = '''
importer = sys.modules[EXT.__name__ + ".importer"]
images = sys.modules[EXT.__name__ + ".images"]

bpy.ops.wm.read_homefile(use_empty=True)
scene = bpy.context.scene
reference = images.load_image(PARAMS["reference"])
imported = importer.import_result(PARAMS["folder"], scene, reference)
objects = describe(imported.collection.objects)
from bpy_extras.object_utils import world_to_camera_view
width, height = scene.render.resolution_x, scene.render.resolution_y
projected = {}  # pixel (column, row) of every vertex as seen through the imported camera
for obj in imported.objects:
    points = [world_to_camera_view(scene, scene.camera, obj.matrix_world @ v.co) for v in obj.data.vertices]
    projected[obj.name] = [[p.x * width, (1.0 - p.y) * height] for p in points]
done({"projected": projected, "collection": imported.collection.name,
      "collection_job": imported.collection.get("scenewright_job_id"),
      "scene_collections": [c.name for c in scene.collection.children], "objects": objects,
      "skipped": imported.skipped, "scene_camera": scene.camera.name if scene.camera else None,
      "render": [scene.render.resolution_x, scene.render.resolution_y], "reference": reference.name})
'''


@pytest.mark.parametrize("resolution", [(640, 480), (480, 640)], ids=["landscape", "portrait"])
def test_import_places_one_object_per_instance_with_camera(blender, tmp_path, resolution):
    folder = tmp_path / "result"
    instances, camera = _write_result(folder, resolution)
    reference = tmp_path / "reference.png"
    Image.new("RGB", resolution, (200, 180, 160)).save(reference)

    out = blender.run(IMPORT_SCRIPT, {"folder": str(folder), "reference": str(reference)}).result

    assert out["scene_collections"] == [out["collection"]]
    assert out["collection_job"] == JOB_ID
    meshes = {name: o for name, o in out["objects"].items() if o["type"] == "MESH"}
    assert sorted(meshes) == ["instance_2", "table_1"]  # named after label or id; the empty instance is skipped
    assert out["skipped"] == [3]
    for name, inst in (("table_1", instances[0]), ("instance_2", instances[1])):
        obj = meshes[name]
        assert obj["collections"] == [out["collection"]]
        assert obj["mesh"] == name and obj["mesh_users"] == 1
        assert obj["faces"] == len(inst.faces)
        # origin at the bottom centre of the object's own bounds
        assert obj["local_min"][2] == 0.0
        np.testing.assert_allclose(np.add(obj["local_min"][:2], obj["local_max"][:2]) / 2, 0.0, atol=1e-6)
        # placed exactly where the transform puts the original mesh
        world = inst.vertices @ inst.transform[:3, :3].T + inst.transform[:3, 3]
        np.testing.assert_allclose(obj["world_min"], world.min(0), atol=1e-5)
        np.testing.assert_allclose(obj["world_max"], world.max(0), atol=1e-5)
        assert obj["props"]["scenewright_job_id"] == JOB_ID
        assert obj["props"]["scenewright_seed"] == 42
        assert obj["props"]["scenewright_instance_id"] == inst.id
        assert '"steps": 3' in obj["props"]["scenewright_settings"]

    cameras = [o for o in out["objects"].values() if o["type"] == "CAMERA"]
    assert len(cameras) == 1 and out["scene_camera"] is not None
    cam = cameras[0]
    assert math.isclose(cam["angle"], math.radians(camera["fov_deg"]), rel_tol=1e-6)
    assert cam["sensor_fit"] == "AUTO"
    np.testing.assert_allclose(cam["matrix_world"], camera["matrix_world"], atol=1e-6)
    assert cam["show_bg"] and cam["bg_image"] == out["reference"]
    assert out["render"] == list(resolution)
    # through the imported camera every vertex lands where the backend's camera model puts it
    backend_camera = Camera.from_dict(camera)
    for name, inst in (("table_1", instances[0]), ("instance_2", instances[1])):
        world = inst.vertices @ inst.transform[:3, :3].T + inst.transform[:3, 3]
        pixels, _ = backend_camera.project(world)
        np.testing.assert_allclose(out["projected"][name], pixels, atol=1e-2)
