"""Render a sampled scene to a benchmark case with Blender (Cycles, CPU).

This module imports bpy: only `scenewright make-data` worker processes (and
test subprocesses) import it, never the service or the pipeline.

Two renders per case: the shaded image (Cycles, few samples + OpenImageDenoise)
and the instance map, made by a second 1-sample render in which every
instance is an emitter of grey level k/255 seen through the Raw view
transform with no dithering, so each pixel is exactly one instance id (one
camera ray per pixel: no anti-aliasing mixes ids).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import bpy
import numpy as np
import trimesh
from mathutils import Matrix, Vector
from PIL import Image

from ..camera import render_silhouettes
from .scenes import SceneDescription, SceneObject

CASE_FORMAT = "scene-case/1"
MIN_PIXELS_512 = 300  # instances showing fewer pixels (at 512 px) are removed from the scene
MIN_VISIBLE_FRACTION = 0.15  # ... and so are those showing less than this share of their silhouette
SMOOTH_ANGLE_DEG = 35.0


class SceneRejected(RuntimeError):
    """The sampled scene does not make a valid case (too few visible instances)."""


def _node_tree(datablock: Any) -> Any:
    if datablock.node_tree is None:
        datablock.use_nodes = True
    return datablock.node_tree


def _material(name: str, color: tuple[float, float, float], roughness: float) -> Any:
    mat = bpy.data.materials.new(name)
    bsdf = _node_tree(mat).nodes.get("Principled BSDF")
    bsdf.inputs["Base Color"].default_value = (*color, 1.0)
    bsdf.inputs["Roughness"].default_value = roughness
    return mat


def _emitter(name: str, value: float) -> Any:
    """Flat emission of one grey level: the instance-id material of the seg render."""
    mat = bpy.data.materials.new(name)
    tree = _node_tree(mat)
    tree.nodes.clear()
    emit = tree.nodes.new("ShaderNodeEmission")
    emit.inputs["Color"].default_value = (value, value, value, 1.0)
    emit.inputs["Strength"].default_value = 1.0
    out = tree.nodes.new("ShaderNodeOutputMaterial")
    tree.links.new(emit.outputs["Emission"], out.inputs["Surface"])
    return mat


def _mesh_object(name: str, vertices: np.ndarray, faces: np.ndarray, smooth: bool) -> Any:
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata(vertices.tolist(), [], faces.tolist())
    if smooth:
        mesh.shade_smooth()
        mesh.set_sharp_from_angle(angle=math.radians(SMOOTH_ANGLE_DEG))
    mesh.update()
    obj = bpy.data.objects.new(name, mesh)
    bpy.context.scene.collection.objects.link(obj)
    return obj


class _BlenderScene:
    """The Blender objects of one case, switchable between the shaded and the id render."""

    def __init__(self, scene: SceneDescription, meshes: list[trimesh.Trimesh], samples: int, threads: int):
        bpy.ops.wm.read_factory_settings(use_empty=True)
        self.scene = scene
        self.samples = samples
        bs = bpy.context.scene
        bs.render.engine = "CYCLES"
        bs.cycles.device = "CPU"
        bs.render.resolution_x, bs.render.resolution_y = scene.camera.resolution
        bs.render.resolution_percentage = 100
        bs.render.threads_mode = "FIXED" if threads > 0 else "AUTO"
        if threads > 0:
            bs.render.threads = threads
        bs.render.dither_intensity = 0.0
        bs.render.image_settings.file_format = "PNG"
        bs.render.image_settings.color_mode = "RGB"
        bs.render.image_settings.color_depth = "8"
        bs.view_settings.look = "None"
        bs.view_settings.exposure = 0.0
        bs.view_settings.gamma = 1.0
        bs.cycles.caustics_reflective = bs.cycles.caustics_refractive = False

        light = scene.lighting
        world = bpy.data.worlds.new("sky")
        bs.world = world
        self.background = _node_tree(world).nodes.get("Background")

        sun_data = bpy.data.lights.new("sun", type="SUN")
        sun_data.energy = light.sun_strength
        sun_data.angle = math.radians(light.sun_angle_deg)
        self.sun = bpy.data.objects.new("sun", sun_data)
        self.sun.rotation_euler = Vector(light.sun_direction).to_track_quat("Z", "Y").to_euler()
        bs.collection.objects.link(self.sun)

        size = 500.0
        ground_v = np.array([[-size, -size, 0], [size, -size, 0], [size, size, 0], [-size, size, 0]], dtype=np.float64)
        ground_v[:, 2] = scene.ground_z
        self.ground = _mesh_object("ground", ground_v, np.array([[0, 1, 2, 3]]), smooth=False)
        self.ground_materials = (_material("ground", light.ground_color, 0.9), _emitter("ground_id", 0.0))

        self.objects: list[Any] = []
        self.materials: list[tuple[Any, Any]] = []
        for k, (obj, mesh) in enumerate(zip(scene.objects, meshes), start=1):
            curved = obj.label in ("sphere", "capsule", "torus", "cylinder", "cone", "stool", "lamp")
            vertices, faces = np.asarray(mesh.vertices), np.asarray(mesh.faces)
            self.objects.append(_mesh_object(f"instance_{k}", vertices, faces, curved))
            rough = 0.45 + 0.4 * ((k * 0.618) % 1.0)
            self.materials.append((_material(f"mat_{k}", obj.color, rough), _emitter(f"id_{k}", k / 255.0)))

        cam_data = bpy.data.cameras.new("camera")
        cam_data.sensor_fit = scene.camera.sensor_fit
        cam_data.angle = math.radians(scene.camera.fov_deg)
        cam_data.clip_start = 0.02
        cam_data.clip_end = 2000.0
        cam = bpy.data.objects.new("camera", cam_data)
        cam.matrix_world = Matrix(np.asarray(scene.camera.matrix_world).tolist())
        bs.collection.objects.link(cam)
        bs.camera = cam

    def _assign(self, shaded: bool) -> None:
        pick = 0 if shaded else 1
        for obj, mats in zip(self.objects, self.materials):
            obj.data.materials.clear()
            obj.data.materials.append(mats[pick])
        self.ground.data.materials.clear()
        self.ground.data.materials.append(self.ground_materials[pick])

    def remove(self, keep: list[int]) -> None:
        """Delete the instances whose index is not in `keep` (0-based, in scene order)."""
        for k in sorted(set(range(len(self.objects))) - set(keep), reverse=True):
            bpy.data.objects.remove(self.objects[k])
        self.objects = [self.objects[k] for k in keep]
        self.materials = [self.materials[k] for k in keep]

    def render_ids(self, path: Path) -> np.ndarray:
        """(H, W) uint8 ids: k = position+1 in the current object list, 0 = ground and sky."""
        bs = bpy.context.scene
        self._assign(shaded=False)
        for k, mats in enumerate(self.materials, start=1):
            mats[1].node_tree.nodes["Emission"].inputs["Color"].default_value = (k / 255.0, k / 255.0, k / 255.0, 1.0)
        bs.cycles.samples = 1
        bs.cycles.use_adaptive_sampling = False
        bs.cycles.use_denoising = False
        bs.cycles.max_bounces = 0
        bs.view_settings.view_transform = "Raw"
        self.background.inputs["Color"].default_value = (0.0, 0.0, 0.0, 1.0)
        self.sun.hide_render = True
        bs.render.filepath = str(path)
        bpy.ops.render.render(write_still=True)
        ids = np.asarray(Image.open(path))[..., 0].copy()
        path.unlink()
        return ids

    def render_image(self, path: Path) -> None:
        bs = bpy.context.scene
        light = self.scene.lighting
        self._assign(shaded=True)
        bs.cycles.samples = self.samples
        bs.cycles.use_adaptive_sampling = True
        bs.cycles.use_denoising = True
        bs.cycles.denoiser = "OPENIMAGEDENOISE"
        bs.cycles.denoising_quality = "FAST"  # HIGH costs ~5x the CPU time of the 8-sample render itself
        bs.cycles.denoising_prefilter = "FAST"
        bs.cycles.max_bounces = 4
        bs.cycles.diffuse_bounces = 2
        bs.cycles.glossy_bounces = 1
        bs.cycles.transmission_bounces = 0
        bs.cycles.volume_bounces = 0
        bs.cycles.transparent_max_bounces = 0
        bs.view_settings.view_transform = "Standard"
        self.background.inputs["Color"].default_value = (*light.sky_color, 1.0)
        self.background.inputs["Strength"].default_value = light.sky_strength
        self.sun.hide_render = False
        bs.render.filepath = str(path)
        bpy.ops.render.render(write_still=True)


def render_case(scene: SceneDescription, out_dir: Path, samples: int = 8, threads: int = 1) -> dict[str, Any]:
    """Write image.png, seg.png, scene.json and instances/k.ply for one scene; returns its INDEX.json entry.

    The image size is the scene camera's resolution. Instances that end up
    mostly hidden (few pixels, or a small visible share of their own
    silhouette) are removed from the scene with whatever rests on them, and
    the ids are renumbered 1..N in scene order.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    (out_dir / "instances").mkdir(parents=True, exist_ok=True)
    world_meshes = [o.world_mesh() for o in scene.objects]
    blender = _BlenderScene(scene, world_meshes, samples, threads)
    width, height = scene.camera.resolution
    min_pixels = max(4, round(MIN_PIXELS_512 * width * height / 512**2))
    full = render_silhouettes([(m.vertices, m.faces) for m in world_meshes], scene.camera).sum(axis=(1, 2))
    keep = list(range(len(scene.objects)))
    while True:
        ids = blender.render_ids(out_dir / "ids_tmp.png")
        counts = np.bincount(ids.ravel(), minlength=len(keep) + 1)
        visible = [counts[j + 1] / max(full[i], 1) for j, i in enumerate(keep)]
        drop = {i for j, i in enumerate(keep) if counts[j + 1] < min_pixels or visible[j] < MIN_VISIBLE_FRACTION}
        if not drop:
            break
        changed = True
        while changed:  # an object resting on a removed one goes with it
            extra = {i for i in keep if scene.objects[i].support in drop} - drop
            drop |= extra
            changed = bool(extra)
        blender.remove([j for j, i in enumerate(keep) if i not in drop])
        keep = [i for i in keep if i not in drop]
        if len(keep) < 2:
            raise SceneRejected(f"scene {scene.seed}: fewer than two instances are visible")
    Image.fromarray(ids).save(out_dir / "seg.png")
    blender.render_image(out_dir / "image.png")

    new_id = {i: k for k, i in enumerate(keep, start=1)}
    kept: list[SceneObject] = [scene.objects[i] for i in keep]
    instances = []
    for k, (i, obj) in enumerate(zip(keep, kept), start=1):
        world_meshes[i].export(out_dir / "instances" / f"{k}.ply", file_type="ply", encoding="binary")
        instances.append({"id": k, "label": obj.label, "mesh": f"instances/{k}.ply",
                          "support": new_id.get(obj.support) if obj.support is not None else None,
                          # the object's own frame (resting on z = 0, front -Y) -> world: training reads shapes in it
                          "matrix_world": np.asarray(obj.matrix_world, dtype=np.float64).tolist()})
    case = {
        "format": CASE_FORMAT,
        "camera": scene.camera.to_dict(),
        "instances": instances,
        "ground_z": float(scene.ground_z),
        "seed": int(scene.seed),
    }
    (out_dir / "scene.json").write_text(json.dumps(case, indent=2))
    return {
        "n": len(keep),
        "labels": [o.label for o in kept],
        "style": scene.style,
        "tags": scene.tags,
        "seed": int(scene.seed),
        "fov_deg": round(float(scene.camera.fov_deg), 2),
        "elevation_deg": round(float(scene.elevation_deg), 2),
        "fill": round(float(scene.fill), 3),
        "dropped": len(scene.objects) - len(keep),
        "instances": [
            {**{key: v for key, v in inst.items() if key != "matrix_world"}, "pixels": int(counts[k]),
             "visible_fraction": round(float(counts[k] / max(full[i], 1)), 3)}
            for k, (i, inst) in enumerate(zip(keep, instances), start=1)
        ],
        "render_s": round(time.perf_counter() - start, 2),
    }
