"""The metrics of PROTOCOL.md section 4, vectorised with numpy and scipy's cKDTree.

Choices the protocol leaves open, fixed here once:
- Sampling is seeded per (instance id, purpose), the same on both sides, so a
  score is reproducible, independent of the order instances are listed in,
  and a prediction equal to the ground truth scores exactly CD 0 and F 1.
- ICP moves the prediction onto the ground truth. Each iteration solves the
  total rigid transform (Kabsch) from the untouched source points to their
  current nearest neighbours, so an iteration whose correspondences equal the
  previous one's is a fixed point and the remaining iterations are skipped
  (the result is the same as running all 50).
- CD-O/F-O: each mesh is min-max normalised per axis first and sampled after,
  so the points stay area-uniform on the normalised shape.
- LCD uses every non-empty predicted instance (also ids absent from the ground
  truth); with none it is 2*sqrt(3), the diagonal of the normalised scene box.
- SSR occupancy: the predicted scene box (after normalisation) is split into
  64 cells per axis. A mesh is subdivided until its edges are shorter than
  half a cell, the cells holding its vertices are its surface, and cavities
  the surface encloses are filled (scipy binary_fill_holes): a closed
  (watertight) mesh becomes solid, an open one stays a shell.
- Reproj-IoU renders the reported camera at the mask's resolution; an
  instance without a (non-empty) prediction scores 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from trimesh.remesh import subdivide_to_size

from ..camera import Camera
from .cases import Case, Mesh, Prediction

NUM_SAMPLES = 20_480
ICP_ITERATIONS = 50
ICP_POINTS = 4096  # source points whose correspondences drive ICP (see icp)
F_TAU = 0.1
OBJECT_EXTENT = 0.95
OCCUPANCY_RESOLUTION = 64
FUSED_IOU = 0.5
SAMPLING_SEED = 0
EMPTY_CD, EMPTY_F, EMPTY_IOU = 1.0, 0.0, 0.0
WORST_LCD = 2.0 * math.sqrt(3.0)

SCENE_METRICS = ("cd_s", "f_s", "lcd", "ssr")  # averaged over cases
INSTANCE_METRICS = ("cd_o", "f_o", "iou_b", "reproj_iou")  # averaged over pooled instances
_SCENE, _OBJECT = 0, 1


def face_areas(mesh: Mesh) -> np.ndarray:
    vertices, faces = mesh
    tri = vertices[faces]
    return 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)


def is_empty(mesh: Mesh | None) -> bool:
    """No triangles or no area: nothing to sample, so the instance scores as empty."""
    return mesh is None or len(mesh[1]) == 0 or not float(face_areas(mesh).sum()) > 0.0


def bounds(mesh: Mesh) -> tuple[np.ndarray, np.ndarray]:
    """AABB of the vertices the faces use."""
    used = mesh[0][np.unique(mesh[1])]
    return used.min(axis=0), used.max(axis=0)


def scene_normalisation(meshes: Iterable[Mesh]) -> tuple[np.ndarray, float]:
    """(centre, scale) that centre the union's AABB at the origin and make its longest side 2."""
    boxes = [bounds(m) for m in meshes]
    lo = np.min([b[0] for b in boxes], axis=0)
    hi = np.max([b[1] for b in boxes], axis=0)
    longest = float((hi - lo).max())
    return (lo + hi) / 2.0, (2.0 / longest if longest > 0 else 1.0)


def transform_mesh(mesh: Mesh, centre: np.ndarray, scale: float | np.ndarray) -> Mesh:
    return (mesh[0] - centre) * scale, mesh[1]


def normalise_scene(meshes: dict[int, Mesh]) -> dict[int, Mesh]:
    """The meshes of one scene, its union's box centred and its longest side 2 (section 4's normalisation)."""
    centre, scale = scene_normalisation(meshes.values())
    return {k: transform_mesh(m, centre, scale) for k, m in meshes.items()}


def normalised_boxes(meshes: dict[int, Mesh]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Each non-empty mesh's box with the scene (the union of those meshes) normalised as IoU-B is."""
    meshes = {k: m for k, m in meshes.items() if not is_empty(m)}
    return {k: bounds(m) for k, m in normalise_scene(meshes).items()} if meshes else {}


def object_normalise(mesh: Mesh) -> Mesh:
    """Min-max normalise each axis to [-0.95, 0.95] (a flat axis maps to 0)."""
    lo, hi = bounds(mesh)
    extent = hi - lo
    scale = np.where(extent > 0, 2.0 * OBJECT_EXTENT / np.where(extent > 0, extent, 1.0), 0.0)
    return transform_mesh(mesh, (lo + hi) / 2.0, scale)


def sample_surface(mesh: Mesh, count: int, seed: Sequence[int]) -> np.ndarray:
    """`count` points uniformly by area (seeded): faces by area, then uniform barycentric coordinates."""
    rng = np.random.default_rng(list(seed))
    areas = face_areas(mesh)
    cumulative = np.cumsum(areas)
    face = np.searchsorted(cumulative, rng.random(count) * cumulative[-1], side="right")
    face = np.minimum(face, len(areas) - 1)
    u, v = rng.random(count), rng.random(count)
    flip = u + v > 1.0
    u[flip], v[flip] = 1.0 - u[flip], 1.0 - v[flip]
    tri = mesh[0][mesh[1][face]]
    return tri[:, 0] + u[:, None] * (tri[:, 1] - tri[:, 0]) + v[:, None] * (tri[:, 2] - tri[:, 0])


def kabsch(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation R and translation t minimising |R source + t - target|^2 over paired points."""
    cs, ct = source.mean(axis=0), target.mean(axis=0)
    u, _, vt = np.linalg.svd((source - cs).T @ (target - ct))
    d = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    rotation = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return rotation, ct - rotation @ cs


def icp(source: np.ndarray, target: np.ndarray, iterations: int = ICP_ITERATIONS, tree: cKDTree | None = None,
        max_points: int | None = ICP_POINTS) -> np.ndarray:
    """Rigidly align `source` to `target` (point-to-point, rotation + translation, no scale); returns moved source.

    Correspondences are searched for an evenly spaced subset of at most
    `max_points` source points (the samples are in random order, so the subset
    is itself area-uniform) against every target point.
    """
    tree = tree if tree is not None else cKDTree(target)
    step = max(1, -(-len(source) // max_points)) if max_points else 1
    subset = source[::step]
    rotation, translation = np.eye(3), np.zeros(3)
    previous = None
    for _ in range(iterations):
        _, index = tree.query(subset @ rotation.T + translation)
        if previous is not None and np.array_equal(index, previous):
            break
        previous = index
        rotation, translation = kabsch(subset, target[index])
    return source @ rotation.T + translation


def chamfer_fscore(pred: np.ndarray, gt: np.ndarray, tau: float = F_TAU, gt_tree: cKDTree | None = None) -> tuple[float, float]:
    """(Chamfer with squared distances, mean + mean; F-score at tau on plain distances)."""
    d_pred, _ = (gt_tree if gt_tree is not None else cKDTree(gt)).query(pred)
    d_gt, _ = cKDTree(pred).query(gt)
    chamfer = float(np.mean(d_pred**2) + np.mean(d_gt**2))
    precision, recall = float(np.mean(d_pred < tau)), float(np.mean(d_gt < tau))
    fscore = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return chamfer, fscore


def aligned_scores(pred_points: np.ndarray, gt_points: np.ndarray) -> tuple[float, float]:
    """ICP the prediction onto the GT, then (CD, F)."""
    tree = cKDTree(gt_points)
    return chamfer_fscore(icp(pred_points, gt_points, tree=tree), gt_points, gt_tree=tree)


def box_iou(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """Volume IoU of two axis-aligned boxes (lo, hi)."""
    inter = float(np.prod(np.clip(np.minimum(a[1], b[1]) - np.maximum(a[0], b[0]), 0.0, None)))
    union = float(np.prod(a[1] - a[0]) + np.prod(b[1] - b[0])) - inter
    return inter / union if union > 0 else 0.0


def box_errors(pred: tuple[np.ndarray, np.ndarray], gt: tuple[np.ndarray, np.ndarray]) -> dict[str, list[float]]:
    """Where a predicted box (lo, hi) is off its GT box, per axis of the view frame (x side, y depth, z height).

    Not a protocol metric: it says which axis IoU-B is lost on. `centre_error`: the centres' difference as a
    fraction of the GT box's size along the axis; `log_size_ratio`: log of the predicted size over the GT's;
    `iou_b_with_gt_axis`: the box IoU once that axis' interval is replaced by the GT's (1 for a box wrong
    along that axis only); `iou_b_with_gt_centre` and `iou_b_with_gt_size`: the box IoU once the box is
    moved onto the GT's centre (its own size kept), or given the GT's size about its own centre: whether
    where a box is or how big it is costs more.
    """
    lo, hi = np.asarray(pred[0], np.float64), np.asarray(pred[1], np.float64)
    gt_lo, gt_hi = np.asarray(gt[0], np.float64), np.asarray(gt[1], np.float64)
    gt_size = np.maximum(gt_hi - gt_lo, 1e-12)
    with_gt_axis = []
    for axis in range(3):
        fixed_lo, fixed_hi = lo.copy(), hi.copy()
        fixed_lo[axis], fixed_hi[axis] = gt_lo[axis], gt_hi[axis]
        with_gt_axis.append(box_iou((fixed_lo, fixed_hi), (gt_lo, gt_hi)))
    centre, gt_centre = (lo + hi) / 2.0, (gt_lo + gt_hi) / 2.0
    return {
        "centre_error": ((centre - gt_centre) / gt_size).tolist(),
        "log_size_ratio": np.log(np.maximum(hi - lo, 1e-12) / gt_size).tolist(),
        "iou_b_with_gt_axis": with_gt_axis,
        "iou_b_with_gt_centre": box_iou((lo - centre + gt_centre, hi - centre + gt_centre), (gt_lo, gt_hi)),
        "iou_b_with_gt_size": box_iou((centre - (gt_hi - gt_lo) / 2.0, centre + (gt_hi - gt_lo) / 2.0), (gt_lo, gt_hi)),
    }


def centre_chamfer(pred: np.ndarray, gt: np.ndarray) -> float:
    """Chamfer between two small point sets with plain Euclidean distances, mean + mean."""
    if len(pred) == 0:
        return WORST_LCD
    dist = np.linalg.norm(pred[:, None, :] - gt[None, :, :], axis=-1)
    return float(dist.min(axis=1).mean() + dist.min(axis=0).mean())


def occupancy(mesh: Mesh, lo: np.ndarray, hi: np.ndarray, resolution: int = OCCUPANCY_RESOLUTION) -> np.ndarray:
    """(res, res, res) bool occupancy of `mesh` over the box [lo, hi] (see the module docstring)."""
    cell = np.maximum((hi - lo) / resolution, 1e-9)
    vertices, _ = subdivide_to_size((mesh[0] - lo) / cell, mesh[1], max_edge=0.5, max_iter=16)
    index = np.clip(np.floor(vertices).astype(np.int64), 0, resolution - 1)
    grid = np.zeros((resolution,) * 3, dtype=bool)
    grid[index[:, 0], index[:, 1], index[:, 2]] = True
    return ndimage.binary_fill_holes(grid)


def count_distinct(meshes: Sequence[Mesh], resolution: int = OCCUPANCY_RESOLUTION) -> int:
    """Number of groups of predicted instances, where instances whose occupancy IoU > 0.5 are fused."""
    if not meshes:
        return 0
    centre, scale = scene_normalisation(meshes)
    normalised = [transform_mesh(m, centre, scale) for m in meshes]
    lo = np.min([bounds(m)[0] for m in normalised], axis=0)
    hi = np.max([bounds(m)[1] for m in normalised], axis=0)
    occ = np.stack([occupancy(m, lo, hi, resolution).ravel() for m in normalised]).astype(np.float32)
    inter = occ @ occ.T
    sizes = occ.sum(axis=1)
    union = sizes[:, None] + sizes[None, :] - inter
    fused = np.where(union > 0, inter / np.maximum(union, 1.0), 0.0) > FUSED_IOU
    n_groups, _ = connected_components(fused, directed=False)
    return n_groups


def reprojection_ious(seg: np.ndarray, ids: Sequence[int], meshes: dict[int, Mesh], camera: Camera) -> dict[int, float]:
    """Per GT id: IoU of its mask in `seg` and the predicted mesh's silhouette through `camera`."""
    from ..camera import render_silhouettes

    height, width = seg.shape
    camera = Camera(np.asarray(camera.matrix_world, dtype=np.float64), camera.fov_deg, (width, height), camera.sensor_fit)
    present = [i for i in ids if i in meshes]
    silhouettes = render_silhouettes([meshes[i] for i in present], camera) if present else []
    out = {i: EMPTY_IOU for i in ids}
    for i, silhouette in zip(present, silhouettes):
        mask = seg == i
        union = np.logical_or(mask, silhouette).sum()
        out[i] = float(np.logical_and(mask, silhouette).sum() / union) if union else 0.0
    return out


def score_case(case: Case, pred: Prediction) -> dict[str, Any]:
    """Every metric of one case; per-instance values listed under "instances"."""
    gt = {inst.id: inst.mesh for inst in case.instances}
    meshes = {k: m for k, m in sorted(pred.meshes.items()) if not is_empty(m)}
    gt_n = normalise_scene(gt)
    gt_points = np.concatenate([sample_surface(m, NUM_SAMPLES, (SAMPLING_SEED, k, _SCENE)) for k, m in gt_n.items()])

    if meshes:
        pred_n = normalise_scene(meshes)
        pred_points = np.concatenate([sample_surface(m, NUM_SAMPLES, (SAMPLING_SEED, k, _SCENE)) for k, m in pred_n.items()])
        cd_s, f_s = aligned_scores(pred_points, gt_points)
    else:
        pred_n, cd_s, f_s = {}, EMPTY_CD, EMPTY_F

    reproj = reprojection_ious(case.seg, list(gt), meshes, pred.camera) if pred.camera is not None else None
    instances = []
    for inst in case.instances:
        k = inst.id
        row: dict[str, Any] = {"id": k, "label": inst.label, "support": inst.support, "empty": k not in meshes}
        if k in meshes:
            pred_obj = sample_surface(object_normalise(meshes[k]), NUM_SAMPLES, (SAMPLING_SEED, k, _OBJECT))
            gt_obj = sample_surface(object_normalise(gt[k]), NUM_SAMPLES, (SAMPLING_SEED, k, _OBJECT))
            row["cd_o"], row["f_o"] = aligned_scores(pred_obj, gt_obj)
            row["iou_b"] = box_iou(bounds(pred_n[k]), bounds(gt_n[k]))
            row["box_error"] = box_errors(bounds(pred_n[k]), bounds(gt_n[k]))
        else:
            row["cd_o"], row["f_o"], row["iou_b"] = EMPTY_CD, EMPTY_F, EMPTY_IOU
            row["box_error"] = None
        row["reproj_iou"] = reproj[k] if reproj is not None else None
        instances.append(row)

    pred_centres = np.array([np.mean(bounds(m), axis=0) for m in pred_n.values()]).reshape(-1, 3)
    gt_centres = np.array([np.mean(bounds(m), axis=0) for m in gt_n.values()])
    n_distinct = count_distinct(list(meshes.values()))
    result: dict[str, Any] = {
        "case": case.name,
        "n_gt": len(gt),
        "n_pred": len(meshes),
        "n_distinct": n_distinct,
        "cd_s": cd_s,
        "f_s": f_s,
        "lcd": centre_chamfer(pred_centres, gt_centres),
        "ssr": min(n_distinct, len(gt)) / max(n_distinct, len(gt)),
    }
    for name in INSTANCE_METRICS:
        values = [row[name] for row in instances if row[name] is not None]
        result[name] = float(np.mean(values)) if values else None
    result["instances"] = instances
    result["time_s"] = pred.meta.get("time_s")
    result["peak_mem_mb"] = pred.meta.get("peak_mem_mb")
    result["errors"] = pred.errors
    return result


def _pooled_means(rows: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Each instance metric's mean over the rows that have it (None when none has)."""
    out: dict[str, float | None] = {}
    for name in INSTANCE_METRICS:
        values = [row[name] for row in rows if row[name] is not None]
        out[name] = float(np.mean(values)) if values else None
    return out


def _box_error_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per axis (x, y, z): median |centre error| and |log size ratio| over the non-empty instances, and the mean
    IoU-B with that axis taken from the GT over all of them (an empty instance counts 0, as in IoU-B); the mean
    IoU-B with the GT's centres and with the GT's sizes, the same way."""
    errors = [row["box_error"] for row in rows if row.get("box_error")]
    if not errors:
        return {"n_instances": len(rows), "median_abs_centre_error": None, "median_abs_log_size_ratio": None,
                "iou_b_with_gt_axis": None, "iou_b_with_gt_centre": None, "iou_b_with_gt_size": None}

    def mean_over_all(name: str, empty: Any) -> Any:
        return np.mean([row["box_error"][name] if row.get("box_error") else empty for row in rows], axis=0).tolist()

    return {
        "n_instances": len(rows),
        "median_abs_centre_error": np.median(np.abs([e["centre_error"] for e in errors]), axis=0).tolist(),
        "median_abs_log_size_ratio": np.median(np.abs([e["log_size_ratio"] for e in errors]), axis=0).tolist(),
        "iou_b_with_gt_axis": mean_over_all("iou_b_with_gt_axis", [EMPTY_IOU] * 3),
        "iou_b_with_gt_centre": mean_over_all("iou_b_with_gt_centre", EMPTY_IOU),
        "iou_b_with_gt_size": mean_over_all("iou_b_with_gt_size", EMPTY_IOU),
    }


def summarise(per_case: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means as the protocol defines them: scene metrics over cases, instance metrics over pooled instances."""
    means: dict[str, float | None] = {}
    for name in SCENE_METRICS:
        means[name] = float(np.mean([c[name] for c in per_case])) if per_case else None
    rows = [row for c in per_case for row in c["instances"]]
    means.update(_pooled_means(rows))
    # Not a protocol metric: the instance metrics of instances on the ground and of those resting on another
    # (the GT's support), where the small supported props are what costs IoU-B most (docs/results.md).
    by_support, box_error = {}, {"all": _box_error_summary(rows)}
    for group, on_ground in (("ground", True), ("supported", False)):
        members = [row for row in rows if (row.get("support") is None) == on_ground]
        by_support[group] = {"n_instances": len(members), **_pooled_means(members)}
        box_error[group] = _box_error_summary(members)
    times = [c["time_s"] for c in per_case if c.get("time_s") is not None]
    memory = [c["peak_mem_mb"] for c in per_case if c.get("peak_mem_mb") is not None]
    return {
        "means": means,
        "means_by_support": by_support,
        "box_error": box_error,  # which axis of the view frame IoU-B is lost on (not a protocol metric)
        "n_cases": len(per_case),
        "n_instances": sum(c["n_gt"] for c in per_case),
        "n_cases_with_camera": sum(1 for c in per_case if c["reproj_iou"] is not None),
        "time_s_median": float(np.median(times)) if times else None,
        "peak_mem_mb_max": float(np.max(memory)) if memory else None,
    }
