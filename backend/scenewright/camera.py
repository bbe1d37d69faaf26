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
        return np.linalg.inv(self.matrix_world)

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (P, 3) -> pixel coordinates (P, 2) as (column, row) and depth (P,) along the view axis."""
        pts = np.asarray(points, dtype=np.float64)
        cam = pts @ self.world_to_camera()[:3, :3].T + self.world_to_camera()[:3, 3]
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
