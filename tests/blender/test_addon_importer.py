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
    assert sorted(meshes) == ["instance_2", "table"]  # named after the label, else the node; the empty one skipped
    assert out["skipped"] == [3]
    for name, inst in (("table", instances[0]), ("instance_2", instances[1])):
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
    for name, inst in (("table", instances[0]), ("instance_2", instances[1])):
        world = inst.vertices @ inst.transform[:3, :3].T + inst.transform[:3, 3]
        pixels, _ = backend_camera.project(world)
        np.testing.assert_allclose(out["projected"][name], pixels, atol=1e-2)


OPTIONS_SCRIPT = '''
importer = sys.modules[EXT.__name__ + ".importer"]
bpy.ops.wm.read_homefile(use_empty=True)
scene = bpy.context.scene
counts = lambda: {kind: len(getattr(bpy.data, kind)) for kind in ("objects", "meshes", "materials", "lights", "worlds")}
start = counts()
options = importer.ImportOptions(**PARAMS["options"])
imported = importer.import_result(PARAMS["folder"], scene, None, options)
again = importer.import_result(PARAMS["folder"], scene, None, options)  # a second result next to the first
done({"objects": describe(imported.collection.objects), "second": sorted(o.name for o in again.collection.objects),
      "collection": imported.collection.name, "scene_objects": sorted(o.name for o in scene.collection.objects),
      "start": start, "end": counts(), "world": scene.world.name if scene.world else None,
      "all_in_collections": sorted(o.name for o in bpy.data.objects if o.users_collection and
                                   all(c.name in (imported.collection.name, again.collection.name)
                                       for c in o.users_collection))})
'''


def test_import_names_colours_ground_and_lighting_live_in_the_result_collection(blender, tmp_path):
    """Labels name objects and meshes (chair, chair.001), each gets a material in its reference colour, and the
    ground and the sun are in the result's collection, so deleting it removes everything the import made."""
    cube = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    cube.apply_translation((0, 0, 0.5))
    colours = [(0.8, 0.2, 0.1), (0.1, 0.5, 0.9), (0.3, 0.3, 0.3)]
    instances = [GeneratedInstance(k + 1, label, cube.vertices.astype(np.float32), cube.faces.astype(np.int32),
                                   _rotation_z(0, (2.0 * k, 0.0, 0.0)), color=colour)
                 for k, (label, colour) in enumerate(zip(["chair", "chair", "lamp"], colours))]
    camera = {"resolution": [64, 48], "sensor_fit": "AUTO", "fov_deg": 50.0,
              "matrix_world": [[1.0, 0, 0, 2.0], [0, 0.6, -0.8, -6.0], [0, 0.8, 0.6, 4.0], [0, 0, 0, 1]]}
    result = GenerationResult(instances, GenerationSettings(seed=1), {"name": "scene"}, camera=camera,
                              supports={1: None, 2: None, 3: None})
    export_result(result, tmp_path / "result", JOB_ID, model="tiny")

    out = blender.run(OPTIONS_SCRIPT, {"folder": str(tmp_path / "result"),
                                       "options": {"colors": True, "ground": True, "lighting": True}}).result
    meshes = {name: o for name, o in out["objects"].items() if o["type"] == "MESH"}
    assert sorted(meshes) == ["SceneWright ground", "chair", "chair.001", "lamp"]
    for name, colour in zip(["chair", "chair.001", "lamp"], colours):
        assert meshes[name]["mesh"] == name and meshes[name]["props"]["scenewright_label"] == name.split(".")[0]
        linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in colour]
        np.testing.assert_allclose(meshes[name]["materials"][0]["base"][:3], linear, atol=1e-6)
        np.testing.assert_allclose(meshes[name]["materials"][0]["diffuse"][:3], linear, atol=1e-6)
    ground = meshes["SceneWright ground"]
    assert ground["world_min"][2] == ground["world_max"][2] == 0.0
    assert ground["world_min"][0] < -1.0 and ground["world_max"][0] > 5.0  # under the whole scene
    suns = [name for name, o in out["objects"].items() if o["type"] == "LIGHT"]
    assert suns == ["SceneWright sun"]  # in the result's collection, not the scene's
    assert out["scene_objects"] == [] and out["world"] == "SceneWright sky"
    # the second import found the first one's sun and the world: it adds no light and no world
    assert not any(name.startswith("SceneWright sun") for name in out["second"])
    assert out["end"]["lights"] == 1 and out["end"]["worlds"] == out["start"]["worlds"] + 1
    assert set(out["all_in_collections"]) == set(out["objects"]) | set(out["second"])

    plain = blender.run(OPTIONS_SCRIPT, {"folder": str(tmp_path / "result"),
                                         "options": {"colors": False, "ground": False, "lighting": False}}).result
    assert all(not o.get("materials") for o in plain["objects"].values() if o["type"] == "MESH")
    assert sorted(plain["objects"]) == ["SceneWright camera 01234567", "chair", "chair.001", "lamp"]
