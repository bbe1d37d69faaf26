"""A geometric baseline: every instance mask becomes an axis-aligned box standing on the ground plane.

It assumes a default camera (the centre of the benchmark's field-of-view and
elevation ranges, yaw 0, so the world frame is the view frame) and reads each
mask through it: the ray through the mask's lowest pixels meets the ground at
the box's front face; the rays through the mask's leftmost and rightmost
pixels meet that face at the box's sides; the box is as deep as it is wide;
its height makes the back top edge project onto the mask's top row. It
reports the camera it assumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import trimesh

from ..camera import Camera
from .cases import Mesh


@dataclass
class BoxBaselineConfig:
    fov_deg: float = 47.5  # centre of the protocol's 35..60 degree range
    elevation_deg: float = 27.5  # centre of its 10..45 degree range
    camera_height: float = 2.0  # metres; sets only the overall scale
    depth_ratio: float = 1.0  # box depth (along +Y) / box width
    min_ray_drop: float = 0.02  # rays at or above the horizon are tilted down this much (far, finite boxes)


def default_camera(width: int, height: int, config: BoxBaselineConfig) -> Camera:
    """Camera at (0, 0, camera_height), yaw 0, pitched down by the elevation (Blender convention)."""
    e = math.radians(config.elevation_deg)
    c, s = math.cos(e), math.sin(e)
    matrix = np.eye(4)
    matrix[:3, 0] = (1.0, 0.0, 0.0)  # image right
    matrix[:3, 1] = (0.0, s, c)  # image up
    matrix[:3, 2] = (0.0, -c, s)  # the camera looks down -Z
    matrix[:3, 3] = (0.0, 0.0, config.camera_height)
    return Camera(matrix, config.fov_deg, (width, height))


def _rays(camera: Camera, cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """World directions (P, 3) through image points given as (column, row) in pixel units."""
    width, height = camera.resolution
    f = camera.focal_px
    local = np.stack([(cols - width / 2.0) / f, -(rows - height / 2.0) / f, -np.ones_like(cols)], axis=-1)
    return local @ camera.matrix_world[:3, :3].T


def predict_boxes(seg: np.ndarray, config: BoxBaselineConfig | None = None) -> tuple[dict[int, Mesh], Camera]:
    """(H, W) seg map (k = instance k) -> one box mesh per instance id, and the assumed camera."""
    config = config or BoxBaselineConfig()
    height, width = seg.shape
    camera = default_camera(width, height, config)
    origin = camera.matrix_world[:3, 3]
    meshes: dict[int, Mesh] = {}
    for inst_id in (int(v) for v in np.unique(seg) if v != 0):
        rows, cols = np.nonzero(seg == inst_id)
        bottom = rows.max() + 1.0  # the lower edge of the lowest pixels
        centre_col = cols[rows == rows.max()].mean() + 0.5
        ground_dir = _rays(camera, np.array([centre_col]), np.array([bottom]))[0]
        ground_dir[2] = min(ground_dir[2], -config.min_ray_drop * np.linalg.norm(ground_dir))
        front_y = (origin + ground_dir * (-origin[2] / ground_dir[2]))[1]
        # The mask's leftmost and rightmost pixels, then its top row, meet vertical planes y = const.
        left, right = np.argmin(cols), np.argmax(cols)
        side_dirs = _rays(camera, np.array([cols[left], cols[right] + 1.0]), np.array([rows[left], rows[right]]) + 0.5)
        x_left, x_right = origin[0] + side_dirs[:, 0] * (front_y - origin[1]) / side_dirs[:, 1]
        box_depth = config.depth_ratio * max(x_right - x_left, 1e-3)
        back_y = front_y + box_depth
        top_dir = _rays(camera, np.array([centre_col]), np.array([float(rows.min())]))[0]
        box_height = max(origin[2] + top_dir[2] * (back_y - origin[1]) / top_dir[1], 1e-3)
        box = trimesh.creation.box(bounds=[[x_left, front_y, 0.0], [x_right, back_y, box_height]])
        meshes[inst_id] = (np.asarray(box.vertices, dtype=np.float64), np.asarray(box.faces, dtype=np.int64))
    return meshes, camera
