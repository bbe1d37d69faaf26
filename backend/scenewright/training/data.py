"""Training data of the default model: VAE examples from procedural scenes, DiT examples from rendered cases.

Both stages see every instance in its scene's *normalised view frame*: the
instance meshes are rotated into the view frame of PROTOCOL.md section 3
(+Z up, +Y away from the camera, +X image-right), then the axis-aligned box of
the union of the scene's instances is centred at the origin and scaled
uniformly so that its longest side spans [-SCENE_HALF_EXTENT, SCENE_HALF_EXTENT]
(`SceneNormalization`). The model therefore generates every instance already
placed in a scene box; at inference, placement solves the camera and the metric
scale, which undoes this origin and scale.

Shards are compressed .npz files of fixed-size arrays, so a shard is a few MiB
and can be shipped to a remote GPU machine in pieces (see docs/training.md):

- VAE shard (`vae-NNNNN.npz`): per instance `surface` (S, 6) float16 points +
  normals for the encoder, `points` (Q, 3) float32 decoder queries and their
  signed distances `sdf` (Q,) float16 (negative inside, the decoder's sign).
- DiT shard (`dit-NNNNN.npz`): per scene `num_instances` and the scene's
  DINO crop; per instance the CLIP crop, the instance's DINO crop, the mask
  (bit-packed) and `surface` samples; crops are the feature extractors'
  uint8 pixels, so `conditions()` rebuilds the encoders' float inputs exactly.
  VAE latents of the surfaces are computed once per trained VAE and cached
  next to the shards (`latents.npz`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np
import torch
import trimesh

from ..config import ConfigMixin
from ..image_processing import ImageProcessorConfig, build_conditions

if TYPE_CHECKING:
    from ..models.condition_encoder import ConditionEncoderConfig

SCENE_HALF_EXTENT = 0.9  # the normalised scene box is [-0.9, 0.9] on its longest side; the VAE box is 1.005
LATENTS_FILE = "latents.npz"


@dataclass
class SceneNormalization:
    """view frame -> normalised view frame: x' = (x - center) * scale."""

    center: np.ndarray  # (3,)
    scale: float

    @classmethod
    def fit(cls, vertex_sets: Sequence[np.ndarray], half_extent: float = SCENE_HALF_EXTENT) -> "SceneNormalization":
        """Centre the union's bounding box and scale its longest side to 2 * half_extent."""
        points = np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1, 3) for v in vertex_sets])
        low, high = points.min(axis=0), points.max(axis=0)
        return cls((low + high) / 2.0, float(2.0 * half_extent / (high - low).max()))

    def apply(self, vertices: np.ndarray) -> np.ndarray:
        return (np.asarray(vertices, dtype=np.float64) - self.center) * self.scale

    def invert(self, vertices: np.ndarray) -> np.ndarray:
        return np.asarray(vertices, dtype=np.float64) / self.scale + self.center


@dataclass
class SampleConfig(ConfigMixin):
    """How many samples each instance gets, and how far near-surface queries stray (normalised units)."""

    surface_points: int = 4096
    near_points: int = 4096
    uniform_points: int = 2048
    near_sigmas: tuple[float, ...] = (0.005, 0.03)
    distance_points: int = 50000  # dense surface samples the query distances are measured to
    dit_surface_points: int = 2048


# ---- geometry --------------------------------------------------------------------------------


def normalized_scene(meshes: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[list[trimesh.Trimesh], SceneNormalization]:
    """View-frame (vertices, faces) of one scene -> the same meshes in the normalised view frame."""
    norm = SceneNormalization.fit([v for v, _ in meshes])
    return [trimesh.Trimesh(norm.apply(v), np.asarray(f), process=False) for v, f in meshes], norm


def sample_surface(mesh: trimesh.Trimesh, count: int, rng: np.random.Generator) -> np.ndarray:
    """(count, 6) float32 points uniform by area with their face normals."""
    areas = np.asarray(mesh.area_faces, dtype=np.float64)
    faces = rng.choice(len(areas), size=count, p=areas / areas.sum())
    u, v = rng.random((2, count))
    flip = u + v > 1.0  # fold the unit square onto the triangle
    u[flip], v[flip] = 1.0 - u[flip], 1.0 - v[flip]
    tri = np.asarray(mesh.triangles, dtype=np.float64)[faces]
    points = tri[:, 0] + u[:, None] * (tri[:, 1] - tri[:, 0]) + v[:, None] * (tri[:, 2] - tri[:, 0])
    return np.concatenate([points, np.asarray(mesh.face_normals)[faces]], axis=1).astype(np.float32)


def sample_queries(mesh: trimesh.Trimesh, cfg: SampleConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Decoder queries, near-surface (Gaussian offsets of surface points) and uniform in [-1, 1]^3, with signed distances.

    The VAE learns a distance-like field (as TripoSG's), so that coarse-to-fine meshing
    refines only a thin band around the surface. Sign: generalised winding number
    (negative inside); magnitude: distance to the nearest of `distance_points` dense
    surface samples (an overestimate by at most about their spacing).
    """
    from scipy.spatial import cKDTree

    from ..data.shapes import inside

    per_sigma = np.array_split(np.arange(cfg.near_points), len(cfg.near_sigmas))
    near = sample_surface(mesh, cfg.near_points, rng)[:, :3]
    for sigma, idx in zip(cfg.near_sigmas, per_sigma):
        near[idx] += rng.normal(0.0, sigma, (len(idx), 3)).astype(np.float32)
    uniform = rng.uniform(-1.0, 1.0, (cfg.uniform_points, 3)).astype(np.float32)
    points = np.concatenate([near, uniform]).clip(-1.0, 1.0)
    distance, _ = cKDTree(sample_surface(mesh, cfg.distance_points, rng)[:, :3]).query(points)
    return points, np.where(inside(mesh, points, chunk=256), -distance, distance).astype(np.float32)


# ---- VAE data --------------------------------------------------------------------------------


def scene_view_meshes(seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The objects of procedural scene `seed` as (vertices, faces) in the scene's view frame (no rendering)."""
    from ..camera import view_frame_transform
    from ..data.scenes import sample_scene

    scene = sample_scene(seed)
    to_view = view_frame_transform(scene.camera.matrix_world)
    meshes = []
    for obj in scene.objects:
        world = obj.world_mesh()
        meshes.append((np.asarray(world.vertices) @ to_view[:3, :3].T + to_view[:3, 3], np.asarray(world.faces)))
    return meshes


def vae_examples(seed: int, cfg: SampleConfig) -> dict[str, np.ndarray]:
    """All instances of procedural scene `seed` as VAE examples (stacked arrays, one row per instance)."""
    rng = np.random.default_rng([seed, 1])
    meshes, _ = normalized_scene(scene_view_meshes(seed))
    rows: dict[str, list[np.ndarray]] = {"surface": [], "points": [], "sdf": []}
    for mesh in meshes:
        points, sdf = sample_queries(mesh, cfg, rng)
        rows["surface"].append(sample_surface(mesh, cfg.surface_points, rng).astype(np.float16))
        rows["points"].append(points)
        rows["sdf"].append(sdf.astype(np.float16))
    return {k: np.stack(v) for k, v in rows.items()}


# ---- DiT data --------------------------------------------------------------------------------


def quantize_pixels(pixels: torch.Tensor, cfg: ImageProcessorConfig) -> np.ndarray:
    """Feature-extractor output (..., 3, h, w) float -> the uint8 pixels it was computed from."""
    mean = torch.tensor(cfg.image_mean, dtype=torch.float64)[:, None, None]
    std = torch.tensor(cfg.image_std, dtype=torch.float64)[:, None, None]
    raw = (pixels.double() * std + mean) / cfg.rescale_factor
    return raw.round().clamp(0, 255).to(torch.uint8).numpy()


def dequantize_pixels(pixels: np.ndarray | torch.Tensor, cfg: ImageProcessorConfig) -> torch.Tensor:
    """uint8 (..., 3, h, w) -> float32 exactly as image_processing computes it (rescale in float64, normalise in float32)."""
    values = (torch.as_tensor(pixels).double() * cfg.rescale_factor).float()
    mean = torch.tensor(cfg.image_mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(cfg.image_std, dtype=torch.float32)[:, None, None]
    return (values - mean) / std


def dit_example(case_dir: str | Path, fe1: ImageProcessorConfig, fe2: ImageProcessorConfig, cfg: SampleConfig,
                seed: int = 0) -> dict[str, np.ndarray] | None:
    """One rendered case (PROTOCOL.md case format) -> encoder crops + surface samples of its visible instances.

    Instances with no pixel in seg.png are left out (the pipeline drops them too);
    the normalisation covers the instances kept. None when no instance is visible.
    """
    from PIL import Image

    from ..evaluation.cases import load_case

    case = load_case(case_dir)
    visible = [inst for inst in case.instances if (case.seg == inst.id).any()]
    if not visible:
        return None
    image = Image.open(case.image_path).convert("RGB")
    masks = [case.seg == inst.id for inst in visible]
    clip_pixels, dino_pixels = build_conditions(image, masks, fe1, fe2)
    meshes, _ = normalized_scene([inst.mesh for inst in visible])
    rng = np.random.default_rng([seed, 2])
    return {
        "num_instances": np.array([len(visible)], dtype=np.int64),
        "scene": quantize_pixels(dino_pixels[:1, 3:6], fe2),
        "clip": quantize_pixels(clip_pixels, fe1),
        "dino": quantize_pixels(dino_pixels[:, :3], fe2),
        "mask": np.packbits(dino_pixels[:, 6].numpy() > 0.5, axis=-1),
        "surface": np.stack([sample_surface(m, cfg.dit_surface_points, rng).astype(np.float16) for m in meshes]),
    }


def conditions(shard: dict[str, np.ndarray], scene: int, fe1: ImageProcessorConfig,
               fe2: ImageProcessorConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Scene `scene` of a DiT shard -> (CLIP pixels (N,3,h,w), DINO pixels (N,7,h,w)) as build_conditions gives them."""
    rows = scene_rows(shard, scene)
    clip = dequantize_pixels(shard["clip"][rows], fe1)
    dino = dequantize_pixels(shard["dino"][rows], fe2)
    scene_px = dequantize_pixels(shard["scene"][scene], fe2).expand_as(dino)
    width = dino.shape[-1]
    mask = torch.from_numpy(np.unpackbits(shard["mask"][rows], axis=-1, count=width).astype(np.float32))
    return clip, torch.cat([dino, scene_px, mask[:, None]], dim=1)


def scene_rows(shard: dict[str, np.ndarray], scene: int) -> slice:
    """Instance rows of scene `scene` in a DiT shard's per-instance arrays."""
    starts = np.concatenate([[0], np.cumsum(shard["num_instances"])])
    return slice(int(starts[scene]), int(starts[scene + 1]))


# ---- scene data of the default model (shape codec + condition encoder) --------------------------


def scene_example(case_dir: str | Path, condition: "ConditionEncoderConfig", resolution: int, truncation: float,
                  seed: int = 0, grids: bool = True) -> dict[str, np.ndarray] | None:
    """One rendered case -> the condition encoder's inputs and each visible instance's pose and SDF grid
    (`grids` off: none, for what reads only poses, in a twentieth of the time).

    Needs the per-instance `matrix_world` that `make-data` writes into scene.json (the
    object's own frame); benchmark cases lack it and are not training data. None when no
    instance is visible.
    """
    import json

    from PIL import Image

    from ..camera import view_frame_transform
    from ..evaluation.cases import load_case, read_mesh
    from ..models.condition_encoder import prepare_conditions
    from .shape_grids import canonical_object, sdf_grid

    case_dir = Path(case_dir)
    case = load_case(case_dir)
    entries = {int(e["id"]): e for e in json.loads((case_dir / "scene.json").read_text())["instances"]}
    visible = [inst for inst in case.instances if (case.seg == inst.id).any()]
    if not visible:
        return None
    if any("matrix_world" not in entries[inst.id] for inst in visible):
        raise ValueError(f"{case_dir}: scene.json has no matrix_world per instance (render it with scenewright make-data)")
    image = np.asarray(Image.open(case.image_path).convert("RGB"))
    inputs = prepare_conditions(image, [case.seg == inst.id for inst in visible], condition)
    to_view = view_frame_transform(case.camera.matrix_world)
    norm = SceneNormalization.fit([inst.mesh[0] for inst in visible])
    rng = np.random.default_rng([seed, 3])
    poses, fields = [], []
    for inst in visible:
        world, faces = read_mesh(case_dir / entries[inst.id]["mesh"])
        obj = canonical_object(world, faces, np.asarray(entries[inst.id]["matrix_world"]), to_view, norm.center, norm.scale)
        poses.append(obj.pose.to_vector())
        if grids:
            fields.append(sdf_grid(obj.unit_vertices, obj.faces, resolution, truncation, rng).reshape(-1))
    matrix = np.asarray(case.camera.matrix_world, dtype=np.float64)
    camera = [math.degrees(math.asin(float(np.clip(matrix[2, 2], -1.0, 1.0)))), float(case.camera.fov_deg)]
    example = {
        "num_instances": np.array([len(visible)], dtype=np.int64),
        "scene": inputs.scene[None],
        "camera": np.asarray([camera], np.float32),  # the scene's camera pitch and field of view, degrees
        "masks": inputs.masks,
        "crops": inputs.crops,
        "boxes": inputs.boxes,
        "poses": np.asarray(poses, np.float32),
    }
    if grids:
        example["grids"] = np.asarray(fields, np.float16)
    return example


def scene_branch_example(case_dir: str | Path, condition: "ConditionEncoderConfig", resolution: int, truncation: float,
                         seed: int = 0) -> dict[str, np.ndarray] | None:
    """The scene row of I-Scene's scene branch for one case: the whole scene as one object of the codec.

    Its condition is the scene image with the union of the masks as the "instance" (crop and
    box of the union); its target is the union of the visible instances, posed as the
    scene box (centred at the origin of the normalised view frame, yaw 0) with the signed
    distance grid of the union in that box.
    """
    from PIL import Image

    from ..evaluation.cases import load_case
    from ..models.condition_encoder import prepare_conditions
    from ..models.shape_codec import BoxPose
    from .shape_grids import sdf_grid

    case = load_case(case_dir)
    visible = [inst for inst in case.instances if (case.seg == inst.id).any()]
    if not visible:
        return None
    image = np.asarray(Image.open(case.image_path).convert("RGB"))
    union_mask = np.isin(case.seg, [inst.id for inst in visible])
    inputs = prepare_conditions(image, [union_mask], condition)
    norm = SceneNormalization.fit([inst.mesh[0] for inst in visible])
    parts = [(norm.apply(inst.mesh[0]), np.asarray(inst.mesh[1])) for inst in visible]
    vertices = np.concatenate([v for v, _ in parts])
    offsets = np.cumsum([0] + [len(v) for v, _ in parts[:-1]])
    faces = np.concatenate([f + o for (_, f), o in zip(parts, offsets)])
    low, high = vertices.min(axis=0), vertices.max(axis=0)
    extents = np.maximum(high - low, 1e-9)
    grid = sdf_grid((vertices - (low + high) / 2) / extents, faces, resolution, truncation, np.random.default_rng([seed, 4]))
    pose = BoxPose((low + high) / 2, extents, 0.0)
    return {"masks": inputs.masks, "crops": inputs.crops, "boxes": inputs.boxes,
            "poses": pose.to_vector()[None].astype(np.float32), "grids": grid.reshape(1, -1).astype(np.float16)}


# ---- shards ----------------------------------------------------------------------------------


def write_shard(path: str | Path, examples: Iterable[dict[str, np.ndarray]], meta: dict[str, Any]) -> int:
    """Concatenate examples row-wise into one compressed .npz (written atomically); returns its size in bytes."""
    path = Path(path)
    examples = list(examples)
    arrays = {key: np.concatenate([e[key] for e in examples]) for key in examples[0]}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    tmp.replace(path)
    return path.stat().st_size


def read_shard(path: str | Path, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The shard's arrays (only `keys` when given: the others are not decompressed)."""
    with np.load(path) as data:
        return {key: data[key] for key in data.files if key != "meta" and (keys is None or key in keys)}


def shard_meta(path: str | Path) -> dict[str, Any]:
    with np.load(path) as data:
        return json.loads(data["meta"].tobytes().decode())


def shard_paths(folder: str | Path, kind: str) -> list[Path]:
    """The `kind` ("vae" or "dit") shards of a data folder, in order."""
    paths = sorted(Path(folder).glob(f"{kind}-*.npz"))
    if not paths:
        raise FileNotFoundError(f"no {kind}-*.npz shards in {folder}; make them with `scenewright train --stage {kind}-data`")
    return paths


def load_shards(folder: str | Path, kind: str, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """All shards of a folder concatenated (scene counts of DiT shards stay aligned with their instance rows)."""
    shards = [read_shard(p, keys) for p in shard_paths(folder, kind)]
    return {key: np.concatenate([s[key] for s in shards]) for key in shards[0]}


def chunks(items: Sequence[Any], size: int) -> Iterator[tuple[int, Sequence[Any]]]:
    """(index, items) of consecutive chunks of `size` items: one shard each."""
    for index, start in enumerate(range(0, len(items), size)):
        yield index, items[start : start + size]
