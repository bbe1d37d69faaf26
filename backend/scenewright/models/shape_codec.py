"""A linear shape codec: box pose + PCA coefficients of a signed-distance grid -> a placed mesh.

The default model's instance latent (docs/model-card.md). Each object is described in its
canonical frame, the object's own frame (resting on z = 0, front towards -Y) turned by the
multiple of 90 degrees about +Z that leaves a residual yaw in [-45, 45) degrees:

- pose (8 numbers, in the scene's normalised view frame): the canonical box's centre (3),
  the log of its extents (3) and (cos 4 yaw, sin 4 yaw) of the residual yaw. Turning a
  box by 90 degrees and swapping its extents describes the same object, so restricting
  the yaw to a quarter turn removes that ambiguity from the diffusion target; what is
  left (the front of a chair facing one way or the other) is in the shape;
- shape: the object normalised per axis to the unit cube [-1/2, 1/2]^3, as a signed
  distance grid (negative inside), projected on a PCA basis and whitened, so every
  coefficient has unit variance over the training objects.

Both parts are standardised (zero mean, unit variance over the training set) and laid
out as `tokens` x `channels` latent tokens: the pose first, then the coefficients.
Decoding is linear up to marching cubes, so it needs no network and runs in milliseconds.

A codec may carry a library of clean procedural shapes (their coefficients; built by
`training/shape_library.py`): a sample lands near the right kind of object but with noise in
every coefficient, which shows as lumps, holes and layered surfaces; its nearest library shapes
(distance between the signed-distance grids) are clean objects of that kind. `alternatives`
decodes them in the sample's pose, and the placement keeps one where its silhouette fits the
instance's mask better than the sample's (docs/results.md, "Library shapes chosen by their silhouette").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..config import ConfigMixin

POSE_SIZE = 8
Mesh = tuple[np.ndarray, np.ndarray]


@dataclass
class ShapeCodecConfig(ConfigMixin):
    grid_resolution: int = 32  # samples per axis of the unit-cube grid (margins included)
    num_components: int = 64
    tokens: int = 9  # latent layout: tokens x channels = POSE_SIZE + num_components
    channels: int = 8
    truncation: float = 0.1  # signed distances are clamped to +-truncation (unit-cube units)
    level: float = 0.0  # marching-cubes level of the decoded grid
    # connected pieces with less than this share of the largest piece's area are dropped: a sampled grid
    # may hold small floating blobs, which no blockout object has (composites are joined parts)
    min_piece: float = 0.1
    library_size: int = 0  # clean shapes in the library (`alternatives`; 0: none)

    def __post_init__(self) -> None:
        if self.tokens * self.channels != POSE_SIZE + self.num_components:
            raise ValueError(f"{self.tokens} x {self.channels} latent numbers do not hold a pose ({POSE_SIZE}) "
                             f"and {self.num_components} shape coefficients")


def grid_coordinates(resolution: int) -> np.ndarray:
    """Sample positions along one axis of the unit cube: the cube's faces lie halfway between the outer samples."""
    return ((np.arange(resolution) - (resolution - 1) / 2.0) / (resolution - 2)).astype(np.float64)


def rotation_z(angle: float | np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    zero, one = np.zeros_like(c), np.ones_like(c)
    return np.stack([np.stack([c, -s, zero], -1), np.stack([s, c, zero], -1), np.stack([zero, zero, one], -1)], -2)


@dataclass
class BoxPose:
    """An object's canonical box in the normalised view frame: vertices = rotation_z(yaw) @ (unit * extents) + centre."""

    centre: np.ndarray  # (3,)
    extents: np.ndarray  # (3,) positive
    yaw: float  # radians, in [-pi/4, pi/4)

    def to_vector(self) -> np.ndarray:
        return np.concatenate([self.centre, np.log(self.extents), [math.cos(4 * self.yaw), math.sin(4 * self.yaw)]])

    @classmethod
    def from_vector(cls, vector: np.ndarray) -> "BoxPose":
        v = np.asarray(vector, dtype=np.float64)
        return cls(v[:3].copy(), np.exp(np.clip(v[3:6], -12.0, 3.0)), math.atan2(v[7], v[6]) / 4.0)

    def apply(self, unit_vertices: np.ndarray) -> np.ndarray:
        return (np.asarray(unit_vertices, np.float64) * self.extents) @ rotation_z(self.yaw).T + self.centre


def canonical_quarter_turn(yaw: float) -> tuple[int, float]:
    """yaw = k * pi/2 + residual with the residual in [-pi/4, pi/4): returns (k mod 4, residual)."""
    k = math.floor((yaw + math.pi / 4) / (math.pi / 2))
    residual = yaw - k * math.pi / 2
    return k % 4, residual


class ShapeCodec(nn.Module):
    """Latents (N, tokens, channels) <-> (box pose, signed-distance grid); meshes by marching cubes.

    Buffers: the PCA mean grid, the basis scaled by each component's standard deviation
    (so whitened coefficients decode directly), and the pose standardisation.
    """

    def __init__(self, config: ShapeCodecConfig):
        super().__init__()
        self.config = config
        cells = config.grid_resolution**3
        self.register_buffer("mean_grid", torch.zeros(cells))
        self.register_buffer("basis", torch.zeros(config.num_components, cells))
        self.register_buffer("pose_mean", torch.zeros(POSE_SIZE))
        self.register_buffer("pose_std", torch.ones(POSE_SIZE))
        if config.library_size:  # a codec without one has no such weight (checkpoints from before libraries)
            self.register_buffer("library", torch.zeros(config.library_size, config.num_components))

    # ---- the latent layout ------------------------------------------------------------

    def pack(self, poses: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
        """Raw pose vectors (N, 8) + whitened coefficients (N, K) -> standardised latents (N, tokens, channels)."""
        standard = (poses.float() - self.pose_mean.float()) / self.pose_std.float()
        flat = torch.cat([standard, coefficients.float()], dim=1)
        return flat.view(-1, self.config.tokens, self.config.channels)

    def unpack(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents -> (raw pose vectors (N, 8), whitened coefficients (N, K)), float32."""
        flat = latents.float().reshape(latents.shape[0], -1)
        poses = flat[:, :POSE_SIZE] * self.pose_std.float() + self.pose_mean.float()
        return poses, flat[:, POSE_SIZE:]

    # ---- grids --------------------------------------------------------------------------

    def project(self, grids: torch.Tensor) -> torch.Tensor:
        """Signed-distance grids (N, R^3) -> whitened coefficients (N, K) (least squares on the basis)."""
        basis = self.basis.float()
        centred = grids.float().reshape(grids.shape[0], -1) - self.mean_grid.float()
        return torch.linalg.solve(basis @ basis.T, basis @ centred.T).T

    def grids(self, coefficients: torch.Tensor) -> torch.Tensor:
        """Whitened coefficients (N, K) -> signed-distance grids (N, R, R, R) in unit-cube units."""
        r = self.config.grid_resolution
        flat = self.mean_grid.float() + coefficients.float() @ self.basis.float()
        return flat.view(-1, r, r, r)

    def grid_distances(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Squared distances (Na, Nb) between the grids that whitened coefficients a (Na, K) and b (Nb, K)
        decode to: |(a - b) @ basis|^2 = a G a - 2 a G b + b G b with G the basis' Gram matrix, so no grid
        is formed."""
        gram = self.basis.float() @ self.basis.float().T
        a, b = a.float(), b.float()
        return ((a @ gram) * a).sum(1, keepdim=True) - 2.0 * (a @ gram) @ b.T + ((b @ gram) * b).sum(1)[None, :]

    def nearest_library_shapes(self, coefficients: torch.Tensor, count: int) -> torch.Tensor:
        """Whitened coefficients (N, K) -> the indices (N, count) of each one's nearest library shapes
        (`grid_distances`), nearest first; (N, 0) without a library."""
        count = min(count, self.config.library_size)
        if count <= 0:
            return torch.zeros(len(coefficients), 0, dtype=torch.long)
        distance = self.grid_distances(coefficients, self.library.float())
        return distance.topk(count, dim=1, largest=False).indices

    def smooth_gradient(self, gradient: torch.Tensor, latents: torch.Tensor, sigma: float) -> torch.Tensor:
        """A latent-space gradient smoothed as a change of the signed-distance grid it stands for: mapped to
        the grid, convolved with a 3D Gaussian of `sigma` grid cells, projected back (TIMI's eq. 5 on the
        field). The pose token, which is no field, passes through unchanged."""
        if sigma <= 0:
            return gradient
        flat = gradient.float().reshape(gradient.shape[0], -1)
        r = self.config.grid_resolution
        basis = self.basis.float()
        field = (flat[:, POSE_SIZE:] @ basis).view(-1, 1, r, r, r)
        smoothed = gaussian_blur_3d(field, sigma).reshape(len(flat), -1)
        coefficients = torch.linalg.solve(basis @ basis.T, basis @ smoothed.T).T
        return torch.cat([flat[:, :POSE_SIZE], coefficients], dim=1).view_as(gradient).to(gradient.dtype)

    # ---- meshes -------------------------------------------------------------------------

    @torch.no_grad()
    def meshes(self, latents: torch.Tensor, resolution: int | None = None,
               check_cancel: Callable[[], None] | None = None) -> list[Mesh | None]:
        """One placed mesh per latent (normalised view frame), None where the grid has no surface.

        `resolution` resamples the grid trilinearly to that many samples per axis before
        marching cubes (smoother, denser meshes); None keeps the codec's own grid.
        `check_cancel` is called between instances and raises to stop.
        """
        poses, coefficients = self.unpack(latents)
        return self._decode(poses, coefficients, resolution, check_cancel)

    @torch.no_grad()
    def alternatives(self, latents: torch.Tensor, count: int, resolution: int | None = None,
                     check_cancel: Callable[[], None] | None = None) -> list[list[Mesh]]:
        """Per latent, its `count` nearest library shapes (`nearest_library_shapes`) decoded as `meshes`
        decodes it, in its pose; empty lists without a library."""
        poses, coefficients = self.unpack(latents)
        nearest = self.nearest_library_shapes(coefficients, count)
        if nearest.shape[1] == 0:
            return [[] for _ in range(len(latents))]
        decoded = self._decode(poses.repeat_interleave(nearest.shape[1], dim=0),
                               self.library.float()[nearest.reshape(-1)], resolution, check_cancel)
        per = nearest.shape[1]
        return [[m for m in decoded[k * per : (k + 1) * per] if m is not None] for k in range(len(latents))]

    def _decode(self, poses: torch.Tensor, coefficients: torch.Tensor, resolution: int | None,
                check_cancel: Callable[[], None] | None) -> list[Mesh | None]:
        from ..meshing import grid_to_mesh

        grids = self.grids(coefficients)
        native = self.config.grid_resolution
        if resolution is not None and resolution != native:
            grids = nn.functional.interpolate(grids[:, None], size=(resolution,) * 3, mode="trilinear",
                                              align_corners=True)[:, 0]
        half = float(grid_coordinates(native)[-1])  # a resampled grid spans the same box
        out: list[Mesh | None] = []
        for pose, grid in zip(poses.cpu().numpy(), grids.cpu().numpy()):
            if check_cancel is not None:
                check_cancel()
            mesh = grid_to_mesh(grid, (-half,) * 3, (half,) * 3, level=self.config.level)
            if mesh is None:
                out.append(None)
                continue
            vertices, faces = drop_small_pieces(mesh.vertices, mesh.faces, self.config.min_piece)
            vertices = BoxPose.from_vector(pose).apply(vertices)
            out.append((vertices.astype(np.float32), faces.astype(np.int32)))
        return out


def drop_small_pieces(vertices: np.ndarray, faces: np.ndarray, min_share: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep the connected pieces (faces joined by shared vertices) with at least `min_share` of the largest one's area."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if min_share <= 0 or len(faces) == 0:
        return vertices, faces
    count = len(vertices)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(count, count))
    pieces, label = connected_components(graph, directed=False)
    if pieces == 1:
        return vertices, faces
    tri = vertices[faces].astype(np.float64)
    areas = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    piece_area = np.bincount(label[faces[:, 0]], areas, minlength=pieces)
    keep_faces = piece_area[label[faces[:, 0]]] >= min_share * piece_area.max()
    kept = faces[keep_faces]
    used = np.unique(kept)
    remap = np.full(count, -1, np.int64)
    remap[used] = np.arange(len(used))
    return vertices[used], remap[kept]


def gaussian_blur_3d(volume: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, C, D, H, W) convolved with an isotropic Gaussian (separable, edges replicated, 3 sigma wide)."""
    radius = max(1, math.ceil(3.0 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=volume.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(volume.dtype)
    channels = volume.shape[1]
    out = volume
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = len(kernel)
        weight = kernel.view(shape).expand(channels, 1, *shape[2:])
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        out = nn.functional.conv3d(nn.functional.pad(out, pad, mode="replicate"), weight, groups=channels)
    return out
