"""Benchmark cases and prediction folders on disk (PROTOCOL.md sections 1 and 3).

A mesh is a `(vertices (V, 3) float64, faces (F, 3) int64)` pair; an empty
instance is `None`. Ground truth is returned in the view frame, which is the
frame predictions are compared in.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trimesh
from PIL import Image

from ..camera import Camera, view_frame_transform
from ..masks import seg_to_gray

Mesh = tuple[np.ndarray, np.ndarray]
MESH_SUFFIXES = (".ply", ".glb", ".obj")
_MESH_NAME = re.compile(r"^(\d+)\.(ply|glb|obj)$")


@dataclass
class GTInstance:
    id: int
    label: str | None
    mesh: Mesh  # view frame
    support: int | None = None


@dataclass
class Case:
    name: str
    path: Path
    camera: Camera  # world frame, as in scene.json
    seg: np.ndarray  # (H, W) uint8, 0 = background, k = instance k
    instances: list[GTInstance]

    @property
    def image_path(self) -> Path:
        return self.path / "image.png"


@dataclass
class Prediction:
    meshes: dict[int, Mesh | None]  # instance id -> mesh in the prediction's frame, None when empty
    camera: Camera | None = None  # the reported camera, in the frame of the meshes
    meta: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # files that could not be read (scored as empty)


def list_cases(cases_dir: str | Path) -> list[Path]:
    """Case folders (those holding a scene.json), sorted by name."""
    root = Path(cases_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"cases folder {root} does not exist")
    cases = sorted(p for p in root.iterdir() if (p / "scene.json").is_file())
    if not cases:
        raise FileNotFoundError(f"no case folders (with a scene.json) in {root}")
    return cases


def read_mesh(path: str | Path) -> Mesh | None:
    """Any trimesh-readable mesh file -> (vertices, faces) as stored, or None when it holds no triangles.

    Coordinates are taken as stored for every format (no glTF Y-up conversion):
    PROTOCOL.md asks for meshes already in the view frame.
    """
    loaded = trimesh.load(str(path), force="mesh", process=False)
    vertices = np.asarray(getattr(loaded, "vertices", np.zeros((0, 3))), dtype=np.float64).reshape(-1, 3)
    faces = np.asarray(getattr(loaded, "faces", np.zeros((0, 3))), dtype=np.int64).reshape(-1, 3)
    if len(faces) == 0 or not np.isfinite(vertices).all():
        return None
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise ValueError(f"{Path(path).name}: face indices out of range")
    return vertices, faces


def write_mesh(path: str | Path, mesh: Mesh) -> None:
    trimesh.Trimesh(vertices=mesh[0], faces=mesh[1], process=False).export(str(path))


def load_case(path: str | Path) -> Case:
    """Read scene.json, seg.png and the GT meshes, moving the meshes from world to the view frame."""
    path = Path(path)
    scene = json.loads((path / "scene.json").read_text())
    camera = Camera.from_dict(scene["camera"])
    to_view = view_frame_transform(camera.matrix_world)
    seg = seg_to_gray(Image.open(path / "seg.png"))
    instances = []
    for inst in scene["instances"]:
        mesh = read_mesh(path / inst["mesh"])
        if mesh is None:
            raise ValueError(f"{path.name}: ground-truth mesh {inst['mesh']} has no triangles")
        vertices = mesh[0] @ to_view[:3, :3].T + to_view[:3, 3]
        instances.append(GTInstance(int(inst["id"]), inst.get("label"), (vertices, mesh[1]), inst.get("support")))
    return Case(path.name, path, camera, seg, instances)


def load_prediction(folder: str | Path) -> Prediction:
    """Read PRED/<case>: <k>.ply|.glb|.obj, camera.json, meta.json. A missing folder is an empty prediction."""
    folder = Path(folder)
    pred = Prediction(meshes={})
    if not folder.is_dir():
        pred.errors.append(f"no prediction folder {folder}")
        return pred
    for file in sorted(folder.iterdir()):
        match = _MESH_NAME.match(file.name)
        if not match:
            continue
        inst_id = int(match.group(1))
        if inst_id in pred.meshes:
            pred.errors.append(f"instance {inst_id} has more than one mesh file; using the first")
            continue
        try:
            pred.meshes[inst_id] = read_mesh(file)
        except Exception as exc:  # trimesh raises many types for corrupt files
            pred.meshes[inst_id] = None
            pred.errors.append(f"{file.name}: unreadable ({exc})")
    if (folder / "camera.json").is_file():
        pred.camera = Camera.from_dict(json.loads((folder / "camera.json").read_text()))
    if (folder / "meta.json").is_file():
        pred.meta = json.loads((folder / "meta.json").read_text())
    return pred


def write_prediction(folder: str | Path, meshes: dict[int, Mesh | None], camera: dict[str, Any] | None, meta: dict[str, Any]) -> None:
    """Write one case's prediction in the PROTOCOL.md layout; empty instances get no file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():
        if _MESH_NAME.match(stale.name) or stale.name == "camera.json":
            stale.unlink()
    for inst_id, mesh in meshes.items():
        if mesh is not None and len(mesh[1]):
            write_mesh(folder / f"{inst_id}.ply", mesh)
    if camera is not None:
        (folder / "camera.json").write_text(json.dumps(camera, indent=2))
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))
