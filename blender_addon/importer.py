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


def import_result(result_dir: str | Path, scene: bpy.types.Scene, reference: bpy.types.Image | None = None) -> ImportedResult:
    """Create a new collection with one object per instance, and a camera when the result has one."""
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
        mesh = _new_mesh(record.node, vertices, faces)
        obj = bpy.data.objects.new(record.node, mesh)
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
    return imported


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
