"""Write a generation result as the service and the CLI hand it out: one GLB + one JSON.

The GLB has one named node per instance (its mesh in local coordinates, origin at
the bottom centre, and the node's matrix placing it). glTF is +Y up, so scene
coordinates (Blender's +Z up) are converted on the way out; Blender's glTF
importer converts them back. The JSON (protocol.ResultManifest) carries the
same transforms in Blender's convention, plus ids, labels, camera and timings.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import trimesh

from .files import write_atomic
from .pipeline import GenerationResult
from .protocol import InstanceRecord, ResultManifest

# Blender (+Z up) -> glTF (+Y up): (x, y, z) -> (x, z, -y)
BLENDER_TO_GLTF = np.array([[1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, -1.0, 0, 0], [0, 0, 0, 1.0]])


def srgb_to_linear(value: float) -> float:
    return value / 12.92 if value <= 0.04045 else ((value + 0.055) / 1.055) ** 2.4


def node_name(instance_id: int, label: str | None) -> str:
    """Stable, unique node names: the add-on names objects after them."""
    return f"{label}_{instance_id}" if label else f"instance_{instance_id}"


def write_glb(result: GenerationResult, path: Path) -> None:
    scene = trimesh.Scene()
    root = BLENDER_TO_GLTF
    for inst in result.instances:
        if inst.empty:
            continue
        # Mesh data is stored in glTF axes; the node matrix is the Blender transform conjugated into glTF axes.
        vertices = inst.vertices @ root[:3, :3].T
        mesh = trimesh.Trimesh(vertices=vertices, faces=inst.faces, process=False)
        if inst.color is not None:  # glTF's base colour factor is linear
            linear = [srgb_to_linear(c) for c in inst.color]
            mesh.visual = trimesh.visual.TextureVisuals(material=trimesh.visual.material.PBRMaterial(
                name=node_name(inst.id, inst.label), baseColorFactor=[*linear, 1.0], roughnessFactor=0.8,
                metallicFactor=0.0))
        matrix = root @ inst.transform @ np.linalg.inv(root)
        name = node_name(inst.id, inst.label)
        scene.add_geometry(mesh, node_name=name, geom_name=name, transform=matrix)
    write_atomic(path, scene.export(file_type="glb"))


def build_manifest(result: GenerationResult, job_id: str, model: str | None = None) -> ResultManifest:
    records = []
    for inst in result.instances:
        bounds = None if inst.empty else [inst.vertices.min(0).tolist(), inst.vertices.max(0).tolist()]
        records.append(InstanceRecord(
            id=inst.id, node=node_name(inst.id, inst.label), label=inst.label,
            transform=np.asarray(inst.transform, dtype=float).tolist(), bounds=bounds,
            support=result.supports.get(inst.id), empty=inst.empty,
            color=None if inst.color is None else [round(c, 5) for c in inst.color],
        ))
    settings = {**result.settings.to_dict(), "model": result.settings.model or model}  # the model actually used
    return ResultManifest(job_id=job_id, instances=records, settings=settings, frame=result.frame,
                          camera=result.camera, timings=result.timings, model=model)


def export_result(result: GenerationResult, folder: Path, job_id: str, model: str | None = None) -> tuple[Path, Path]:
    """Write result.glb and result.json into `folder`; returns both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    glb_path, json_path = folder / "result.glb", folder / "result.json"
    write_glb(result, glb_path)
    manifest = build_manifest(result, job_id, model)
    write_atomic(json_path, json.dumps(manifest.to_dict(), indent=1).encode())
    return glb_path, json_path
