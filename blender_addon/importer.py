"""A backend result (result.glb + result.json) -> Blender objects, collection and camera.

The GLB is read directly (not through the glTF importer) so that each instance
becomes exactly one object with its own mesh datablock and nothing else is
created. Placement comes from result.json (protocol.ResultManifest): each
transform is a Blender matrix_world for a mesh whose origin is its bottom centre.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix

from . import protocol

PROP_PREFIX = "scenewright_"
_COMPONENTS = {5120: np.int8, 5121: np.uint8, 5122: np.int16, 5123: np.uint16, 5125: np.uint32, 5126: np.float32}
_WIDTHS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}
# glTF (+Y up) -> Blender (+Z up): (x, y, z) -> (x, -z, y)
GLTF_TO_BLENDER = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


class ResultError(ValueError):
    """A result file is missing or malformed; the message names it."""


@dataclass
class ImportedResult:
    collection: bpy.types.Collection
    objects: list[bpy.types.Object] = field(default_factory=list)
    camera: bpy.types.Object | None = None
    skipped: list[int] = field(default_factory=list)  # ids of empty instances (no mesh)


def read_glb_meshes(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Node name -> (vertices (V, 3) float32 in Blender axes and the node's local frame, faces (F, 3) int32)."""
    data = Path(path).read_bytes()
    if len(data) < 20 or data[:4] != b"glTF":
        raise ResultError(f"{path} is not a GLB file")
    chunks, offset = {}, 12
    while offset + 8 <= len(data):
        length, kind = struct.unpack_from("<II", data, offset)
        chunks[kind] = data[offset + 8:offset + 8 + length]
        offset += 8 + length
    gltf = json.loads(chunks[0x4E4F534A])
    binary = chunks.get(0x004E4942, b"")

    def accessor(index: int) -> np.ndarray:
        acc = gltf["accessors"][index]
        view = gltf["bufferViews"][acc["bufferView"]]
        dtype = np.dtype(_COMPONENTS[acc["componentType"]])
        width, count = _WIDTHS[acc["type"]], acc["count"]
        start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
        stride = view.get("byteStride", 0) or dtype.itemsize * width
        rows = np.ndarray((count, width), dtype=dtype, buffer=binary, offset=start, strides=(stride, dtype.itemsize))
        return rows.copy()

    meshes = {}
    for node in gltf.get("nodes", []):
        if "mesh" not in node or "name" not in node:
            continue
        vertices, faces, base = [], [], 0
        for primitive in gltf["meshes"][node["mesh"]]["primitives"]:
            if primitive.get("mode", 4) != 4:
                continue  # only triangle lists carry surfaces
            positions = accessor(primitive["attributes"]["POSITION"]).astype(np.float32)
            if "indices" in primitive:
                indices = accessor(primitive["indices"]).reshape(-1, 3).astype(np.int64)
            else:
                indices = np.arange(len(positions)).reshape(-1, 3)
            vertices.append(positions)
            faces.append(indices + base)
            base += len(positions)
        if vertices:
            verts = np.concatenate(vertices) @ GLTF_TO_BLENDER.T
            meshes[node["name"]] = (verts.astype(np.float32), np.concatenate(faces).astype(np.int32))
    return meshes


def read_result(result_dir: str | Path) -> tuple[protocol.ResultManifest, dict[str, tuple[np.ndarray, np.ndarray]]]:
    folder = Path(result_dir)
    try:
        manifest = protocol.ResultManifest.from_dict(json.loads((folder / "result.json").read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ResultError(f"cannot read {folder / 'result.json'}: {exc}") from None
    try:
        meshes = read_glb_meshes(folder / "result.glb")
    except (OSError, KeyError, ValueError, IndexError) as exc:
        raise ResultError(f"cannot read {folder / 'result.glb'}: {exc}") from None
    return manifest, meshes


@dataclass
class ImportOptions:
    """What an import adds beyond the objects and the camera (panel toggles; the CLI sets them too)."""

    colors: bool = True  # a material per object in the colour of its reference pixels
    ground: bool = False  # a plane at z = 0 under the scene: floor and contact shadows in renders
    lighting: bool = False  # a sun (and a sky when the scene has no world), unless the scene has its own light


def import_result(result_dir: str | Path, scene: bpy.types.Scene, reference: bpy.types.Image | None = None,
                  options: ImportOptions | None = None) -> ImportedResult:
    """Create a new collection with one object per instance (named after its label), a camera when the result
    has one, and what `options` ask for; everything it creates is in that collection (a world is reused)."""
    options = options or ImportOptions()
    manifest, meshes = read_result(result_dir)
    settings_json = json.dumps(manifest.settings, sort_keys=True)
    collection = bpy.data.collections.new(f"SceneWright {manifest.job_id[:8]}")
    scene.collection.children.link(collection)
    collection[PROP_PREFIX + "job_id"] = manifest.job_id
    collection[PROP_PREFIX + "settings"] = settings_json
    imported = ImportedResult(collection)
    for record in manifest.instances:
        if record.empty or record.node not in meshes:
            imported.skipped.append(record.id)
            continue
        vertices, faces = meshes[record.node]
        vertices, transform = _bottom_centred(vertices, np.asarray(record.transform, dtype=np.float64))
        name = record.label or record.node  # Blender makes repeated names unique: chair, chair.001
        mesh = _new_mesh(name, vertices, faces)
        if options.colors and record.color is not None:
            mesh.materials.append(_material(name, record.color))
        obj = bpy.data.objects.new(name, mesh)
        obj.matrix_world = Matrix(transform.tolist())
        obj[PROP_PREFIX + "job_id"] = manifest.job_id
        obj[PROP_PREFIX + "seed"] = int(manifest.settings.get("seed") or 0)
        obj[PROP_PREFIX + "instance_id"] = int(record.id)
        obj[PROP_PREFIX + "label"] = record.label or ""
        obj[PROP_PREFIX + "settings"] = settings_json
        collection.objects.link(obj)
        imported.objects.append(obj)
    if manifest.camera is not None:
        imported.camera = _add_camera(manifest, collection, scene, reference)
    if options.ground:
        _add_ground(collection, imported.objects)
    if options.lighting:
        _add_lighting(scene, collection)
    return imported


def _srgb_to_linear(value: float) -> float:
    return value / 12.92 if value <= 0.04045 else ((value + 0.055) / 1.055) ** 2.4


def _material(name: str, srgb: list[float]) -> bpy.types.Material:
    """A diffuse material whose base colour is the instance's reference colour (Blender's colours are linear)."""
    material = bpy.data.materials.new(name)
    material.use_nodes = True
    linear = (*(_srgb_to_linear(float(c)) for c in srgb), 1.0)
    material.diffuse_color = linear  # the viewport's solid mode shows it too
    bsdf = material.node_tree.nodes.get("Principled BSDF")
    if bsdf is not None:
        bsdf.inputs["Base Color"].default_value = linear
        bsdf.inputs["Roughness"].default_value = 0.8
    material[PROP_PREFIX + "color_srgb"] = [float(c) for c in srgb]
    return material


def _add_ground(collection: bpy.types.Collection, objects: list[bpy.types.Object]) -> bpy.types.Object:
    """A light grey plane at z = 0, three times as wide as the scene, centred under it."""
    corners = [np.asarray(obj.matrix_world) @ np.append(np.asarray(v), 1.0) for obj in objects for v in obj.bound_box]
    points = np.asarray(corners)[:, :2] if corners else np.zeros((1, 2))
    centre = (points.min(axis=0) + points.max(axis=0)) / 2.0
    half = 1.5 * max(float((points.max(axis=0) - points.min(axis=0)).max()), 1.0)
    vertices = [(centre[0] + x * half, centre[1] + y * half, 0.0) for x, y in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    mesh = bpy.data.meshes.new("SceneWright ground")
    mesh.from_pydata(vertices, [], [(0, 1, 2, 3)])
    mesh.materials.append(_material("SceneWright ground", [0.72, 0.72, 0.72]))
    ground = bpy.data.objects.new("SceneWright ground", mesh)
    ground[PROP_PREFIX + "ground"] = True
    collection.objects.link(ground)
    return ground


def _add_lighting(scene: bpy.types.Scene, collection: bpy.types.Collection) -> None:
    """A soft light-grey sky when the scene has no world (a world is shared: an existing one is reused) and a
    sun in the result's collection when the scene has no light of its own."""
    if scene.world is None:
        scene.world = bpy.data.worlds.new("SceneWright sky")
        scene.world.color = (0.8, 0.8, 0.82)
        scene.world.use_nodes = True
        background = scene.world.node_tree.nodes.get("Background")
        if background is not None:
            background.inputs["Color"].default_value = (0.62, 0.64, 0.68, 1.0)
            background.inputs["Strength"].default_value = 0.9
    if any(obj.type == "LIGHT" for obj in scene.objects if obj.name not in collection.objects):
        return
    sun = bpy.data.objects.new("SceneWright sun", bpy.data.lights.new("SceneWright sun", type="SUN"))
    sun.data.energy = 2.5
    sun.data.angle = np.radians(8.0)  # soft shadow edges, like the reference renders
    sun.rotation_euler = (0.7, 0.2, 0.6)
    collection.objects.link(sun)


def _new_mesh(name: str, vertices: np.ndarray, faces: np.ndarray) -> bpy.types.Mesh:
    """A triangle mesh from arrays with foreach_set (several times faster than from_pydata on big meshes)."""
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(vertices))
    mesh.vertices.foreach_set("co", np.ascontiguousarray(vertices, dtype=np.float32).ravel())
    mesh.loops.add(faces.size)
    mesh.loops.foreach_set("vertex_index", np.ascontiguousarray(faces, dtype=np.int32).ravel())
    mesh.polygons.add(len(faces))
    mesh.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))
    mesh.validate()  # drops degenerate triangles marching cubes can leave
    mesh.update()
    return mesh


def _bottom_centred(vertices: np.ndarray, transform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move the mesh so its origin is the bottom centre of its bounds; compensate in the transform."""
    low, high = vertices.min(axis=0), vertices.max(axis=0)
    origin = np.array([(low[0] + high[0]) / 2, (low[1] + high[1]) / 2, low[2]])
    shift = np.eye(4)
    shift[:3, 3] = origin
    return (vertices - origin).astype(np.float32), transform @ shift


def _add_camera(manifest: protocol.ResultManifest, collection: bpy.types.Collection, scene: bpy.types.Scene,
                reference: bpy.types.Image | None) -> bpy.types.Object:
    """The camera the objects were placed for; the reference image as its background lines them up with the picture."""
    spec = protocol.CameraSpec.from_dict(manifest.camera)
    data = bpy.data.cameras.new(f"SceneWright camera {manifest.job_id[:8]}")
    data.sensor_fit = spec.sensor_fit
    data.angle = np.radians(spec.fov_deg)  # with AUTO fit, the angle spans the larger image side
    if reference is not None:
        data.show_background_images = True
        background = data.background_images.new()
        background.image = reference
        background.frame_method = "FIT"
        background.alpha = 1.0
    camera = bpy.data.objects.new(data.name, data)
    camera.matrix_world = Matrix(spec.matrix_world)
    camera[PROP_PREFIX + "job_id"] = manifest.job_id
    collection.objects.link(camera)
    scene.camera = camera
    scene.render.resolution_x, scene.render.resolution_y = spec.resolution
    scene.render.resolution_percentage = 100
    scene.render.pixel_aspect_x = scene.render.pixel_aspect_y = 1.0
    return camera
