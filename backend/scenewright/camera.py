"""Pinhole cameras in Blender's convention, and the benchmark's view frame.

Blender camera: the object matrix maps camera-local to world; the camera looks
down local -Z, local +Y is image up, local +X image right. With sensor_fit AUTO
the field of view spans the larger image side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .protocol import CameraSpec


@dataclass
class Camera:
    """A camera with numpy matrices; converts to and from the wire/scene.json dict."""

    matrix_world: np.ndarray  # (4, 4) camera-to-world
    fov_deg: float
    resolution: tuple[int, int]  # (width, height) in pixels
    sensor_fit: str = "AUTO"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Camera":
        spec = CameraSpec.from_dict(data)
        return cls(np.asarray(spec.matrix_world, dtype=np.float64), spec.fov_deg, spec.resolution, spec.sensor_fit)

    def to_dict(self) -> dict[str, Any]:
        return CameraSpec(self.matrix_world.tolist(), self.fov_deg, self.resolution, self.sensor_fit).to_dict()

    @property
    def focal_px(self) -> float:
        """Focal length in pixels, for the side the field of view spans."""
        width, height = self.resolution
        fit = self.sensor_fit
        if fit == "AUTO":
            fit = "HORIZONTAL" if width >= height else "VERTICAL"
        side = width if fit == "HORIZONTAL" else height
        return (side / 2.0) / math.tan(math.radians(self.fov_deg) / 2.0)

    def intrinsics(self) -> np.ndarray:
        """3x3 K for pixel coordinates with the origin at the top-left image corner, rows down."""
        width, height = self.resolution
        f = self.focal_px
        return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])

    def world_to_camera(self) -> np.ndarray:
        """Inverse of matrix_world (an affine 4x4), in closed form: solvers call this thousands of times."""
        (a, b, c), (d, e, f), (g, h, i) = np.asarray(self.matrix_world, dtype=np.float64)[:3, :3]
        adjugate = np.array(
            [[e * i - f * h, c * h - b * i, b * f - c * e], [f * g - d * i, a * i - c * g, c * d - a * f], [d * h - e * g, b * g - a * h, a * e - b * d]]
        )
        out = np.eye(4)
        out[:3, :3] = adjugate / (a * adjugate[0, 0] + b * adjugate[1, 0] + c * adjugate[2, 0])
        out[:3, 3] = -out[:3, :3] @ np.asarray(self.matrix_world, dtype=np.float64)[:3, 3]
        return out

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (P, 3) -> pixel coordinates (P, 2) as (column, row) and depth (P,) along the view axis."""
        pts = np.asarray(points, dtype=np.float64)
        to_camera = self.world_to_camera()
        cam = pts @ to_camera[:3, :3].T + to_camera[:3, 3]
        depth = -cam[:, 2]
        safe = np.where(np.abs(depth) < 1e-12, 1e-12, depth)
        width, height = self.resolution
        f = self.focal_px
        cols = width / 2.0 + f * cam[:, 0] / safe
        rows = height / 2.0 - f * cam[:, 1] / safe
        return np.stack([cols, rows], axis=1), depth


def view_frame_rotation(matrix_world: np.ndarray) -> np.ndarray:
    """World -> view frame rotation (3x3): a rotation about world Z only (the camera's yaw).

    View frame (PROTOCOL.md section 3): +Z up, +Y the viewing direction projected
    onto the ground, +X image-right.
    """
    forward = -np.asarray(matrix_world, dtype=np.float64)[:3, 2]
    fxy = forward[:2]
    norm = np.linalg.norm(fxy)
    if norm < 1e-9:  # looking straight down: use the image-up direction instead
        fxy = np.asarray(matrix_world, dtype=np.float64)[:2, 1]
        norm = np.linalg.norm(fxy)
    fx, fy = fxy / norm
    # Rows are the view frame's axes expressed in world coordinates: X = Y x Z.
    return np.array([[fy, -fx, 0.0], [fx, fy, 0.0], [0.0, 0.0, 1.0]])


def view_frame_transform(matrix_world: np.ndarray) -> np.ndarray:
    """4x4 homogeneous world -> view frame transform (rotation only; origin and scale do not matter)."""
    out = np.eye(4)
    out[:3, :3] = view_frame_rotation(matrix_world)
    return out


def render_silhouettes(meshes: list[tuple[np.ndarray, np.ndarray] | None], camera: Camera) -> np.ndarray:
    """Silhouette of each mesh alone (no occlusion by the others) -> (N, H, W) bool.

    A pixel is covered when its centre (column + 0.5, row + 0.5) lies inside a
    projected triangle (edges included). The covered spans of `silhouette_spans`
    go into a per-row difference array, whose running sum is positive exactly
    on their union. Empty meshes (None or no faces) give empty silhouettes.
    """
    width, height = camera.resolution
    owner, row, start, stop = silhouette_spans(meshes, camera)
    diff = np.zeros(len(meshes) * height * (width + 1), dtype=np.int32)
    base = (owner * height + row) * (width + 1)
    diff += np.bincount(base + start, minlength=diff.size).astype(np.int32)
    diff -= np.bincount(base + stop, minlength=diff.size).astype(np.int32)
    return np.cumsum(diff.reshape(len(meshes), height, width + 1)[:, :, :width], axis=2) > 0


def silhouette_spans(
    meshes: list[tuple[np.ndarray, np.ndarray] | None], camera: Camera
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Covered pixel spans of every (triangle, pixel row) pair: (mesh index, row, first column, end column).

    Scanline fill of each triangle's rows (compiled); spans of one row may overlap.
    Columns start..stop-1 are covered (pixel centres inside the triangle).
    Triangles with a vertex at or behind the camera plane are skipped, so a
    mesh must lie in front of the camera.
    """
    from .silhouette_kernels import scanline_spans  # numba: only where silhouettes are drawn

    width, height = camera.resolution
    parts = []
    for index, mesh in enumerate(meshes):
        if mesh is None or len(mesh[1]) == 0:
            continue
        pixels, depth = camera.project(mesh[0])
        row, start, stop = scanline_spans(pixels, depth, np.asarray(mesh[1], dtype=np.int64), width, height)
        parts.append((np.full(len(row), index, dtype=np.int64), row, start, stop))
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty
    return parts[0] if len(parts) == 1 else tuple(np.concatenate(part) for part in zip(*parts))
