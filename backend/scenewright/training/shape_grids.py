"""Objects -> (box pose, signed-distance grid) for the shape codec, and its PCA fit (training only).

An object of a rendered case is its world mesh and its `matrix_world` (its own frame ->
world, a turn about +Z and a shift; `data.render` writes it into scene.json). In the
scene's normalised view frame it becomes a `BoxPose` of its canonical frame (see
`models.shape_codec`) and a mesh in the unit cube, whose signed-distance grid the codec
compresses. The grid's sign comes from a winding number along vertical rays (robust for
the unions of overlapping closed parts the procedural families are), its magnitude from
the distance to dense surface samples, clamped to the codec's truncation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree

from ..models.shape_codec import BoxPose, ShapeCodec, ShapeCodecConfig, canonical_quarter_turn, grid_coordinates, rotation_z

# Column offsets of the vertical rays (unit-cube units): keep rays off the edges of axis-aligned faces.
_RAY_JITTER = (1.2345e-5, 2.7183e-5)


@dataclass
class CanonicalObject:
    """One object: its canonical box in the normalised view frame and its mesh in the unit cube."""

    pose: BoxPose
    unit_vertices: np.ndarray  # (V, 3) in [-1/2, 1/2]^3
    faces: np.ndarray  # (F, 3)


def canonical_object(world_vertices: np.ndarray, faces: np.ndarray, matrix_world: np.ndarray,
                     world_to_view: np.ndarray, centre: np.ndarray, scale: float) -> CanonicalObject:
    """World mesh + object matrix -> canonical box pose (normalised view frame: (x - centre) * scale) + unit mesh.

    `world_to_view` is the case camera's view-frame rotation (4x4, a turn about +Z).
    """
    matrix = np.asarray(matrix_world, np.float64)
    inverse = np.linalg.inv(matrix)
    rest = np.asarray(world_vertices, np.float64) @ inverse[:3, :3].T + inverse[:3, 3]
    view_turn = math.atan2(world_to_view[1, 0], world_to_view[0, 0])
    yaw = math.atan2(matrix[1, 0], matrix[0, 0]) + view_turn
    quarter, residual = canonical_quarter_turn(yaw)
    canonical = rest @ rotation_z(quarter * math.pi / 2).T
    low, high = canonical.min(axis=0), canonical.max(axis=0)
    extents = np.maximum(high - low, 1e-9)
    middle = (low + high) / 2.0
    # view-frame position of the canonical frame's origin: the object's origin, moved into the view frame
    origin_view = world_to_view[:3, :3] @ matrix[:3, 3] + world_to_view[:3, 3]
    centre_view = rotation_z(residual) @ middle + origin_view
    pose = BoxPose((centre_view - centre) * scale, extents * scale, residual)
    return CanonicalObject(pose, (canonical - middle) / extents, np.asarray(faces, np.int64))


def winding_occupancy(vertices: np.ndarray, faces: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Inside/outside (R, R, R) bool at the grid `axis` x `axis` x `axis` (indexing x, y, z).

    Each vertical ray through a grid column adds +1 where it enters a face (normal pointing
    down) and -1 where it leaves one; a sample is inside when the sum below it is positive.
    Faces must be outward oriented; overlapping closed parts count once.
    """
    res = len(axis)
    tri = np.asarray(vertices, np.float64)[np.asarray(faces, np.int64)]  # (F, 3, 3)
    xs, ys = axis + _RAY_JITTER[0], axis + _RAY_JITTER[1]
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    det = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    keep = np.abs(det) > 1e-14
    tri, det = tri[keep], det[keep]
    lo, hi = tri[:, :, :2].min(axis=1), tri[:, :, :2].max(axis=1)
    i0, i1 = np.searchsorted(xs, lo[:, 0]), np.searchsorted(xs, hi[:, 0], side="right")
    j0, j1 = np.searchsorted(ys, lo[:, 1]), np.searchsorted(ys, hi[:, 1], side="right")
    ni, nj = np.maximum(i1 - i0, 0), np.maximum(j1 - j0, 0)
    counts = ni * nj
    owner = np.repeat(np.arange(len(tri)), counts)
    offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    ii = i0[owner] + offset % np.maximum(ni[owner], 1)
    jj = j0[owner] + offset // np.maximum(ni[owner], 1)
    t = tri[owner]
    px, py = xs[ii], ys[jj]
    d = det[owner]
    w1 = ((px - t[:, 0, 0]) * (t[:, 2, 1] - t[:, 0, 1]) - (py - t[:, 0, 1]) * (t[:, 2, 0] - t[:, 0, 0])) / d
    w2 = ((t[:, 1, 0] - t[:, 0, 0]) * (py - t[:, 0, 1]) - (t[:, 1, 1] - t[:, 0, 1]) * (px - t[:, 0, 0])) / d
    w0 = 1.0 - w1 - w2
    hit = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
    z = w0 * t[:, 0, 2] + w1 * t[:, 1, 2] + w2 * t[:, 2, 2]
    k = np.searchsorted(axis, z[hit], side="right")
    crossings = np.zeros((res, res, res + 1))
    np.add.at(crossings, (ii[hit], jj[hit], k), -np.sign(d[hit]))  # entering (normal down, det < 0) adds +1
    return np.cumsum(crossings, axis=2)[:, :, :res] > 0.5


def _surface_samples(tri: np.ndarray, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`count` points uniform by area on triangles (F, 3, 3) and the face each lies on."""
    areas = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    face = np.minimum(np.searchsorted(np.cumsum(areas), rng.random(count) * areas.sum()), len(tri) - 1)
    u, v = rng.random((2, count))
    flip = u + v > 1.0
    u[flip], v[flip] = 1.0 - u[flip], 1.0 - v[flip]
    t = tri[face]
    return t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0]), face


def _distance_inside_triangles(points: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Distance from each point to the plane of its triangle where the foot lies inside it, else inf."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    normal = np.cross(b - a, c - a)
    length = np.linalg.norm(normal, axis=1)
    normal = normal / np.maximum(length, 1e-300)[:, None]
    height = np.einsum("ij,ij->i", points - a, normal)
    foot = points - height[:, None] * normal
    inside = np.ones(len(points), bool)
    for p, q in ((a, b), (b, c), (c, a)):
        inside &= np.einsum("ij,ij->i", np.cross(q - p, foot - p), normal) >= 0
    return np.where(inside & (length > 1e-14), np.abs(height), np.inf)


def sdf_grid(unit_vertices: np.ndarray, faces: np.ndarray, resolution: int, truncation: float,
             rng: np.random.Generator, surface_points: int = 16000, candidates: int = 4) -> np.ndarray:
    """Signed distance (negative inside, clamped to +-truncation) at the codec's grid, float32 (R, R, R).

    Distances are measured only at samples that can be within `truncation` of the surface
    (no farther than that plus a cell diagonal from a sample of the other sign): to the
    nearest of `surface_points` area-uniform samples, improved to the exact distance to
    the faces of the `candidates` nearest samples where the foot of the perpendicular
    lies inside one of them (the usual case on the flat faces of blockout shapes).
    """
    from scipy.ndimage import distance_transform_edt

    axis = grid_coordinates(resolution)
    spacing = float(axis[1] - axis[0])
    tri = np.asarray(unit_vertices, np.float64)[np.asarray(faces, np.int64)]
    inside = winding_occupancy(unit_vertices, faces, axis)
    grid = np.full(inside.shape, truncation, np.float64)
    if inside.any():
        to_other = np.where(inside, distance_transform_edt(inside), distance_transform_edt(~inside)) * spacing
        band = to_other <= truncation + spacing * np.sqrt(3.0)
    else:
        band = np.ones(inside.shape, bool)
    surface, face = _surface_samples(tri, surface_points, rng)
    points = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1)[band]
    distance, index = cKDTree(surface).query(points, k=candidates)
    best = distance[:, 0]
    for k in range(candidates):
        best = np.minimum(best, _distance_inside_triangles(points, tri[face[index[:, k]]]))
    grid[band] = np.minimum(best, truncation)
    return np.where(inside, -grid, grid).astype(np.float32)


def mirror_pose(pose_vector: np.ndarray) -> np.ndarray:
    """An object's pose mirrored through the view frame's x = 0 plane (an image flipped left-right)."""
    pose = BoxPose.from_vector(pose_vector)
    mirrored = BoxPose(pose.centre * np.array([-1.0, 1.0, 1.0]), pose.extents, -pose.yaw)
    if mirrored.yaw >= math.pi / 4:  # -(-pi/4) lands on the excluded end of the range: the same turn
        mirrored.yaw -= math.pi / 2
    return mirrored.to_vector()


def mirror_x(pose_vector: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same object mirrored through the view frame's x = 0 plane: its pose and its grid."""
    return mirror_pose(pose_vector), np.ascontiguousarray(grid[::-1])


def fit_codec(grids: np.ndarray, poses: np.ndarray, config: ShapeCodecConfig) -> ShapeCodec:
    """Closed-form PCA of the grids (N, R^3) and the pose standardisation -> a ShapeCodec.

    Exact: the leading eigenvectors of the N x N Gram matrix of the centred grids (Lanczos,
    scipy's eigsh: only the K wanted pairs, to machine precision), mapped to grid space; the
    basis rows are scaled by the components' standard deviations (whitening).
    """
    from scipy.sparse.linalg import eigsh

    flat = torch.from_numpy(np.asarray(grids, np.float32).reshape(len(grids), -1))
    if config.num_components >= len(flat):
        raise ValueError(f"{config.num_components} components need more than {len(flat)} objects to fit")
    mean = flat.mean(dim=0)
    centred = flat - mean
    gram = (centred @ centred.T).double().numpy()
    found, basis = eigsh(gram, k=config.num_components, which="LA", v0=np.ones(len(gram)))
    order = np.argsort(found)[::-1].copy()
    values = torch.from_numpy(found[order].copy()).clamp_min(1e-12)
    vectors = torch.from_numpy(basis[:, order].copy())
    directions = (vectors.T.float() @ centred) / values.sqrt().float()[:, None]  # unit rows in grid space
    std = (values / max(len(flat) - 1, 1)).sqrt().float()
    codec = ShapeCodec(config)
    pose_t = torch.from_numpy(np.asarray(poses, np.float64))
    with torch.no_grad():
        codec.mean_grid.copy_(mean)
        codec.basis.copy_(directions * std[:, None])
        codec.pose_mean.copy_(pose_t.mean(dim=0).float())
        codec.pose_std.copy_(pose_t.std(dim=0).clamp_min(1e-6).float())
    return codec
