"""Placement: camera solve, ground plane, supports and metric scale for generated instances.

The sampler returns instance meshes in the view frame (PROTOCOL.md section 3:
+Z up, +Y away from the camera along its ground-projected viewing direction,
+X image-right) with arbitrary origin and scale. In that frame the camera has
no yaw and no roll, so it is described by five numbers: pitch (elevation
below the horizon), field of view and position. `solve_camera` finds them so
that each instance's silhouette matches its mask; `place_scene` then puts the
floor at z = 0, keeps objects on their supports, scales the scene to metres
and re-centres every mesh on its bottom centre. Thresholds are fractions of
the scene size (the longest side of the bounding box of all instances);
docs/placement.md explains them.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy.optimize import least_squares, minimize
from scipy.spatial import ConvexHull, QhullError

from .camera import Camera, render_silhouettes, silhouette_spans, view_frame_transform
from .masks import mask_support, other_masks, outline_directions
from .silhouette_kernels import cluster_vertices, span_ious

Mesh = tuple[np.ndarray, np.ndarray]

# Metric scale when the user gives none: blockout scenes are room corners, about 4 m across.
DEFAULT_SCENE_SIZE_M = 4.0
# An instance whose bottom is within this fraction of the scene size of the lowest bottom stands on the floor.
FLOOR_FRACTION = 0.04
# Within this fraction of the scene size of the ground an instance stands on it; an instance sunk this far
# into a support is lifted onto it (farther, it is taken to stand below that surface).
SNAP_FRACTION = 0.05
# The floor plane fit corrects tilts between these angles. Below, a tilt is as likely one instance floating a
# little (snapping handles both); above, the input frame is trusted over the fit.
MIN_TILT_DEG, MAX_TILT_DEG = 2.0, 10.0
# refine_poses stretches an instance along each of its axes by at most this log factor (about 10 %), chosen on
# the validation split (0.1, 0.15, 0.2 and unbounded: docs/results.md, "Pose refinement and levelling").
STRETCH_LIMIT = 0.1
# fit_depths tries these log factors of a flat-topped instance's depth (about 10 % each way; chosen on the
# validation and hard splits: docs/results.md, "Flat tops from the picture's shading"); a top counts as flat
# when its horizontal faces within FLAT_TOP_BAND of its height from the top cover FLAT_TOP_FRACTION of its box.
TOP_DEPTH_FACTORS = (-0.1, -0.05, 0.0, 0.05, 0.1)
FLAT_TOP_BAND, FLAT_TOP_FRACTION = 0.05, 0.5
# fit_depths takes a footprint for round when its widths over all directions differ by at most ROUND_WIDTH_RATIO
# (any rectangle's differ by sqrt(2) or more) and its area is within ROUND_AREA_TOLERANCE of the ellipse of its
# widest and narrowest width (docs/results.md, "Round footprints as deep as they are wide").
ROUND_WIDTH_RATIO, ROUND_AREA_TOLERANCE = 1.3, 0.06
ROUND_FACTOR_MIN = 0.01  # a depth within 1 % of the width is left as it is
# Nelder-Mead evaluations of refine_supported's fit of an instance resting on another, chosen on the validation
# split (60, 100, 200: docs/results.md, "Supported instances fitted again after placement").
SUPPORTED_EVALUATIONS = 100
# An instance whose mask lies within RESTING_GAP of the image's height just below at least RESTING_SHARE of an
# instance's bottom outline (its lowest pixel per column) is what the picture shows it resting on
# (`_pictured_supports`; docs/results.md, "The support the picture shows").
RESTING_GAP, RESTING_SHARE = 0.006, 0.5

# MIDI-3D's native output frame -> view frame (4x4, applied to column vectors).
# The reference (VAST-AI-Research/MIDI-3D) exports its meshes with trimesh as
# they come out of marching cubes over the VAE's [-1, 1]^3 box, in the
# TripoSG/glTF object convention: +Y up and the camera looking down -Z (the
# image's right is +X). Its 3D-FRONT training scenes are y-up as well. So
# view X = x, view Y (away from the camera) = -z, view Z (up) = y: a +90 degree
# rotation about X. MIDI's scene yaw is not guaranteed to face the camera (the
# same scene is trained from several views; its evaluation's ICP absorbs
# that), so solve its camera with CameraSolveConfig(solve_yaw=True):
# place_scene then turns the scene to face the camera.
MIDI_TO_VIEW = np.array(
    [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)


@dataclass
class CameraSolveConfig:
    """Knobs of `solve_camera`; defaults cover the benchmark's 35-60 deg fov and 10-45 deg elevation."""

    pitch_grid_deg: tuple[float, ...] = (5.0, 15.0, 25.0, 35.0, 45.0, 60.0)
    fov_grid_deg: tuple[float, ...] = (30.0, 40.0, 50.0, 60.0, 75.0)
    # Only gravity-aligned frames (MIDI-3D's): also solve the camera's yaw about +Z, starting from each grid value.
    solve_yaw: bool = False
    yaw_grid_deg: tuple[float, ...] = tuple(float(a) for a in range(-180, 180, 30))
    starts: int = 3  # outline fits started from the best grid points
    prior_pitch_deg: float = 25.0  # weak priors keep one-instance scenes well posed
    prior_fov_deg: float = 47.0
    prior_weight: float = 0.01
    refine_evals: int = 60  # Nelder-Mead evaluations of the silhouette refinement (0: none)
    max_faces: int = 4000  # meshes above this are decimated (vertex clustering) for the refinement
    hull_directions: int = 200  # 3D directions whose extreme vertices stand for a mesh in the outline fit
    support_directions: int = 8  # 2D directions of the outline fit (4 = plain 2D boxes)


@dataclass
class PlacedInstance:
    """One instance in the placed scene: a local mesh (origin at its bottom centre) and its object matrix."""

    id: int
    vertices: np.ndarray  # (V, 3) float32, metres, local frame
    faces: np.ndarray  # (F, 3) int32
    transform: np.ndarray  # (4, 4) local -> scene, Blender matrix_world
    support: int | None  # id of the instance it rests on; None: the ground
    snap_m: float = 0.0  # vertical correction applied to make contact, metres

    def world_vertices(self) -> np.ndarray:
        """The vertices where the object matrix puts them (scene frame, float64)."""
        return self.vertices.astype(np.float64) @ self.transform[:3, :3].T + self.transform[:3, 3]


@dataclass
class Placement:
    """Result of `place_scene`. The scene frame: metres, +Z up, ground z = 0, footprint centred on the origin."""

    instances: list[PlacedInstance | None]  # None where the input mesh was empty
    camera: dict[str, Any]  # protocol CameraSpec dict, scene frame
    input_camera: dict[str, Any]  # the same camera in the frame of the input meshes
    scene_from_input: np.ndarray  # (4, 4) similarity (levelling rotation, scale, shift): input -> scene, before snaps
    diagnostics: dict[str, Any] = field(default_factory=dict)
    # `refine_poses`' parameters of each input mesh, when its pose was fitted before placing (ScenePipeline's
    # second pass over the same meshes starts from them)
    pose_params: list[np.ndarray | None] | None = None

    @property
    def input_from_scene(self) -> np.ndarray:
        """Scene frame -> input frame, e.g. to express a scene-frame camera beside the raw predicted meshes."""
        return np.linalg.inv(self.scene_from_input)


def camera_from_params(
    pitch_deg: float, fov_deg: float, position: Sequence[float], resolution: tuple[int, int], yaw_deg: float = 0.0
) -> Camera:
    """A camera without roll looking along +Y turned by `yaw_deg` about +Z (towards -X), tilted down by `pitch_deg`.

    With yaw 0 it is a view-frame camera (PROTOCOL.md section 3).
    """
    pitch, yaw = math.radians(pitch_deg), math.radians(yaw_deg)
    turn = np.array([[math.cos(yaw), -math.sin(yaw), 0.0], [math.sin(yaw), math.cos(yaw), 0.0], [0.0, 0.0, 1.0]])
    matrix = np.eye(4)
    matrix[:3, 0] = turn @ (1.0, 0.0, 0.0)
    matrix[:3, 1] = turn @ (0.0, math.sin(pitch), math.cos(pitch))  # up
    matrix[:3, 2] = turn @ (0.0, -math.cos(pitch), math.sin(pitch))  # -forward
    matrix[:3, 3] = position
    return Camera(matrix, float(fov_deg), (int(resolution[0]), int(resolution[1])))


def _usable(mesh: Mesh | None) -> bool:
    return mesh is not None and len(mesh[1]) > 0 and len(mesh[0]) > 0


class _CameraProblem:
    """The meshes and masks of one solve, normalised so the scene box is centred with longest side 2."""

    def __init__(self, meshes: Sequence[Mesh | None], masks: Sequence[np.ndarray], image_size: tuple[int, int], cfg: CameraSolveConfig):
        self.cfg = cfg
        self.image_size = (int(image_size[0]), int(image_size[1]))
        pairs = [i for i, (m, k) in enumerate(zip(meshes, masks)) if _usable(m) and np.asarray(k).any()]
        self.indices = pairs
        all_vertices = np.concatenate([np.asarray(meshes[i][0], np.float64) for i in pairs])
        lo, hi = all_vertices.min(axis=0), all_vertices.max(axis=0)
        self.center = (lo + hi) / 2.0
        self.scale = 2.0 / max(float((hi - lo).max()), 1e-12)
        self.diagonal = float(np.linalg.norm(hi - lo)) * self.scale
        self.meshes = [((np.asarray(meshes[i][0], np.float64) - self.center) * self.scale, np.asarray(meshes[i][1], np.int64)) for i in pairs]
        self.masks = [np.asarray(masks[i], bool) for i in pairs]
        self.all_masks = [np.asarray(m, bool) for m in masks]
        self.box_centres_3d = [(v.min(axis=0) + v.max(axis=0)) / 2.0 for v, _ in self.meshes]
        boxes = [_pixel_box(m) for m in self.masks]
        self.box_centres = [((c0 + c1) / 2.0, (r0 + r1) / 2.0) for c0, r0, c1, r1 in boxes]
        c0, r0, c1, r1 = _pixel_box(np.any(self.all_masks, axis=0))
        self.union_diagonal_px = max(math.hypot(c1 - c0, r1 - r0), 1.0)
        points = [_extreme_points(v, cfg.hull_directions) for v, _ in self.meshes]
        ends = np.cumsum([len(p) for p in points])
        self.all_points = np.concatenate(points)
        self.point_slices = [slice(e - len(p), e) for p, e in zip(points, ends)]
        self.directions = outline_directions(cfg.support_directions)
        self.extents, self.open_sides = zip(
            *(mask_support(m, o, self.directions) for m, o in zip(self.masks, other_masks(self.masks, self.all_masks)))
        )
        self.low = [_decimate(v, f, cfg.max_faces) for v, f in self.meshes]
        self.scorer = _SpanScorer(self.masks, other_masks(self.masks, self.all_masks))

    # parameters x = [pitch (rad), log tan(fov / 2), camera position (3) in normalised units, (yaw (rad))]
    def camera(self, x: np.ndarray, resolution: tuple[int, int] | None = None) -> Camera:
        fov = math.degrees(2.0 * math.atan(math.exp(x[1])))
        yaw = math.degrees(x[5]) if len(x) > 5 else 0.0
        return camera_from_params(math.degrees(x[0]), fov, x[2:5], resolution or self.image_size, yaw)

    def prior(self, x: np.ndarray) -> np.ndarray:
        cfg = self.cfg
        fov = 2.0 * math.atan(math.exp(x[1]))
        return cfg.prior_weight * np.array(
            [(x[0] - math.radians(cfg.prior_pitch_deg)) / math.radians(30.0), (fov - math.radians(cfg.prior_fov_deg)) / math.radians(30.0)]
        )

    def support_residuals(self, x: np.ndarray) -> np.ndarray:
        """Projected minus mask support function per direction, in image fractions; cut sides only count one way.

        The support function h(d) = max over the shape of p . d, for evenly
        spread 2D directions d, is a 2D box generalised to a 2K-gon: it sees
        the silhouette's outline from K directions instead of 2.
        """
        uv, depth = self.camera(x).project(self.all_points)
        heights = uv @ self.directions.T
        side = float(max(self.image_size))
        out = []
        for rows, extent, open_sides in zip(self.point_slices, self.extents, self.open_sides):
            r = (heights[rows].max(axis=0) - extent) / side
            # Where the mask may be cut (border, occluder) the silhouette may reach farther, not less far.
            r = np.where(open_sides, np.minimum(r, 0.0), r)
            behind = np.maximum(0.05 - depth[rows].min(), 0.0) * 10.0  # points must stay in front of the camera
            out.append(np.append(r, behind))
        return np.concatenate(out + [self.prior(x)])

    def initial(self, pitch_deg: float, fov_deg: float, yaw_deg: float | None) -> np.ndarray:
        """Camera position for a given pitch, fov (and yaw) by linear least squares on box centres and the scene size."""
        width, height = self.image_size
        x = np.array([math.radians(pitch_deg), math.log(math.tan(math.radians(fov_deg) / 2.0)), 0.0, 0.0, 0.0])
        if yaw_deg is not None:
            x = np.append(x, math.radians(yaw_deg))
        camera = self.camera(x)
        f = camera.focal_px
        right, up, forward = camera.matrix_world[:3, 0], camera.matrix_world[:3, 1], -camera.matrix_world[:3, 2]
        rows, rhs = [], []
        for centre3, (col, row) in zip(self.box_centres_3d, self.box_centres):
            a, b = (col - width / 2.0) / f, -(row - height / 2.0) / f
            for axis in (right - a * forward, up - b * forward):
                rows.append(axis)
                rhs.append(axis @ centre3)
        distance = f * self.diagonal / self.union_diagonal_px  # the scene box diagonal spans about the masks' box diagonal
        weight = max(len(rows), 1) ** 0.5
        rows.append(weight * forward)
        rhs.append(weight * (forward @ np.zeros(3) - distance))
        position = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
        x[2:5] = position
        return x

    def silhouette_loss(self, x: np.ndarray) -> float:
        """1 - mean IoU at full resolution, ignoring silhouette pixels on other instances' masks (maybe occluded there)."""
        ious = self.scorer.ious(silhouette_spans(self.low, self.camera(x)))
        return 1.0 - float(np.mean(ious)) + float(np.sum(self.prior(x) ** 2))


class _SpanScorer:
    """Exact silhouette/mask IoUs from covered spans and per-row prefix sums of the masks: no full image is drawn.

    IoU_k = |S ∩ M| / |M ∪ (S minus O)|, with S the silhouette, M the mask and
    O the other instances' masks. Overlapping spans are merged in a coverage count over
    each silhouette's own rows and columns (`silhouette_kernels.span_ious`).
    """

    def __init__(self, masks: list[np.ndarray], others: list[np.ndarray]):
        self.height, self.width = masks[0].shape
        prefix = lambda images: np.pad(np.cumsum(np.asarray(images, np.int32), axis=2), ((0, 0), (0, 0), (1, 0))).reshape(-1)
        self.in_mask = prefix(masks)
        self.in_other = prefix(others)
        self.in_mask_only = prefix([m & ~o for m, o in zip(masks, others)])
        self.mask_area = np.array([m.sum() for m in masks], dtype=np.float64)

    def ious(self, spans: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        owner, row, start, stop = spans
        return span_ious(owner, row, start, stop, self.in_mask, self.in_other, self.in_mask_only, self.mask_area,
                          self.height, self.width)


def solve_camera(
    meshes_view_frame: Sequence[Mesh | None],
    masks: Sequence[np.ndarray],
    image_size: tuple[int, int],
    config: CameraSolveConfig | None = None,
) -> tuple[Camera, dict[str, Any]]:
    """Camera (in the meshes' own frame) through which each mesh's silhouette matches its mask.

    meshes_view_frame[i] pairs with masks[i] ((H, W) bool); a None or empty
    mesh, or an empty mask, is left out of the fit. Without any pair left, the
    camera frames the meshes at the prior pitch and fov (diagnostics "fallback"). Steps: grid over pitch and
    fov with a linear position guess, robust (soft-L1) least squares on the
    masks' outlines (support functions along 8 directions; sides cut by the
    image border or touching another instance only count when the projection
    falls short), then Nelder-Mead on the occlusion-aware silhouette IoU at
    full resolution. Returns the camera at `image_size` and diagnostics.
    """
    cfg = config or CameraSolveConfig()
    start = time.perf_counter()
    width, height = int(image_size[0]), int(image_size[1])
    if not any(_usable(m) and np.asarray(k).any() for m, k in zip(meshes_view_frame, masks)):
        usable = [np.asarray(m[0], np.float64) for m in meshes_view_frame if _usable(m)]
        if not usable:
            raise ValueError("camera solve needs at least one non-empty mesh")
        return _framing_camera(np.concatenate(usable), cfg, (width, height)), {"fallback": True, "used_instances": []}
    problem = _CameraProblem(meshes_view_frame, masks, (width, height), cfg)

    yaws = cfg.yaw_grid_deg if cfg.solve_yaw else (None,)
    grid = [problem.initial(p, f, y) for p in cfg.pitch_grid_deg for f in cfg.fov_grid_deg for y in yaws]
    grid.sort(key=lambda x: float(np.sum(problem.support_residuals(x) ** 2)))
    fits = [
        least_squares(problem.support_residuals, x0, loss="soft_l1", f_scale=0.01, x_scale="jac", max_nfev=200)
        for x0 in grid[: cfg.starts]
    ]
    x = min(fits, key=lambda r: r.cost).x
    outline_cost = float(min(r.cost for r in fits))

    # Silhouette refinement at full resolution; kept only when it lowers the loss.
    loss = problem.silhouette_loss(x)
    if cfg.refine_evals > 0:
        steps = np.array([math.radians(0.5), 0.01, 0.0075, 0.0075, 0.0075, math.radians(0.5)])[: len(x)]
        simplex = np.vstack([x] + [x + np.eye(len(x))[k] * steps[k] for k in range(len(x))])
        result = minimize(
            problem.silhouette_loss, x, method="Nelder-Mead",
            options={"maxfev": cfg.refine_evals, "initial_simplex": simplex, "xatol": 1e-6, "fatol": 1e-6},
        )
        if result.fun < loss:
            x, loss = result.x, float(result.fun)

    camera = problem.camera(x)
    matrix = camera.matrix_world.copy()
    matrix[:3, 3] = matrix[:3, 3] / problem.scale + problem.center  # back to the caller's frame
    camera = Camera(matrix, camera.fov_deg, (width, height))
    diagnostics = {
        "pitch_deg": math.degrees(x[0]),
        "yaw_deg": math.degrees(x[5]) if len(x) > 5 else 0.0,
        "fov_deg": camera.fov_deg,
        "used_instances": list(problem.indices),
        "outline_cost": outline_cost,
        "silhouette_loss": loss,
        "time_s": time.perf_counter() - start,
    }
    return camera, diagnostics


@dataclass
class FittedPoses:
    """`refine_poses`' answer: each instance's mesh in its fitted pose, and that pose's parameters (None where the
    generated pose was kept or there was nothing to fit)."""

    meshes: list[Mesh | None]
    params: list[np.ndarray | None]


def refine_poses(meshes: Sequence[Mesh | None], masks: Sequence[np.ndarray], camera: Camera,
                 evaluations: int = 40, max_faces: int = 1500,
                 hidden: Sequence[np.ndarray] | None = None,
                 alternatives: Sequence[Sequence[Mesh]] | None = None,
                 params: Sequence[np.ndarray | None] | None = None) -> FittedPoses:
    """Fit each instance's pose to its mask through a solved camera: a shift along the ground, a scale about its
    bottom centre (uniform, times a stretch along each of its own axes) and a turn about its vertical axis, so
    its contact height is kept.

    The parameters (shift x, shift y in scene-size units, log scale, yaw, log stretch x, y, z) have one
    quadratic prior, so an aspect change costs more than the uniform scale it could stand for, and the
    stretches are bounded by STRETCH_LIMIT: generated boxes are off by about 10 % per axis, not only in
    scale, but a free stretch grows into the masks of the instances around (where the silhouette costs
    nothing) and can carry the scene's supports with it (docs/results.md, "Pose refinement and levelling").
    Two steps per instance, as the camera solve: a robust least-squares fit of the projected
    outline to the mask's (support functions along 8 directions; sides the mask may be cut
    on, by the border or another instance, only count when the projection falls short),
    which brings a far-off instance back, then Nelder-Mead on 1 - IoU of silhouette and mask
    at full resolution, silhouette pixels on other instances' masks ignored (it may be hidden
    there). A pose is kept only when its IoU is better than the generated one's. For models
    that generate poses, whose instances the camera solve leaves somewhat off their masks.
    Meshes are in the camera's frame. `hidden` (per instance, (H, W) bool): where each may be
    hidden by another; by default every other instance's mask.

    `alternatives` (per instance, other shapes in the same generated pose: the codec's library shapes nearest
    the sampled one): each is moved as the fit moved the instance, and the one whose silhouette fits the mask
    best, if better than the instance's own, replaces it and is fitted again from there.

    `params` (the `FittedPoses.params` of an earlier call with the same meshes, masks and camera, and no
    alternatives): each instance starts from its earlier answer instead of being fitted again, which gives
    the same poses in a fraction of the time, so that only the alternatives are new work.
    """
    all_masks = [np.asarray(m, bool) for m in masks]
    others = other_masks(all_masks, all_masks) if hidden is None else [np.asarray(h, bool) for h in hidden]
    out = list(meshes)
    fitted: list[np.ndarray | None] = [None] * len(meshes)
    for i, mesh in enumerate(meshes):
        if not _usable(mesh) or not all_masks[i].any():
            continue
        fit = _PoseFit(mesh, all_masks[i], others[i], camera, max_faces)
        x = fit.fit(evaluations) if params is None else params[i]
        choices = [_PoseFit(m, all_masks[i], others[i], camera, max_faces, frame=fit)
                   for m in (alternatives[i] if alternatives is not None else ()) if _usable(m)]
        scored = [(choice.iou(x), k, choice) for k, choice in enumerate(choices)]
        if scored and max(scored)[0] > fit.iou(x):
            fit = max(scored)[2]
            x = fit.fit(evaluations, start=x)
        if x is not None or fit.mesh is not mesh:
            out[i] = fit.placed(x)
        fitted[i] = x
    return FittedPoses(out, fitted)


class _PoseFit:
    """One instance's pose fit of `refine_poses`: its parameters x -> moved vertices, the outline residuals and
    the silhouette loss. `frame` (another fit of the same instance): use its pivot, size and scorer, so that the
    same x moves this mesh as it moves that one (a shape in the same pose)."""

    PRIOR = 0.01  # weight of |x|^2 in the IoU loss (its square root in the outline residuals)
    X_SCALE = np.array([0.1, 0.1, 0.1, 0.3, 0.1, 0.1, 0.1])
    SIMPLEX_STEPS = np.array([0.03, 0.03, 0.03, 0.1, 0.03, 0.03, 0.03])
    UPPER = np.array([np.inf] * 4 + [STRETCH_LIMIT] * 3)

    def __init__(self, mesh: Mesh, mask: np.ndarray, other: np.ndarray, camera: Camera, max_faces: int,
                 frame: "_PoseFit | None" = None):
        self.mesh = mesh
        self.vertices, self.faces = np.asarray(mesh[0], np.float64), np.asarray(mesh[1], np.int64)
        self.low = _decimate(self.vertices, self.faces, max_faces)
        self.mask, self.other, self.camera = mask, other, camera
        self.scorer = _SpanScorer([mask], [other]) if frame is None else frame.scorer
        if frame is None:
            lo, hi = self.vertices.min(axis=0), self.vertices.max(axis=0)
            self.size = max(float((hi - lo).max()), 1e-12)
            self.pivot = np.array([(lo[0] + hi[0]) / 2.0, (lo[1] + hi[1]) / 2.0, lo[2]])
        else:
            self.size, self.pivot = frame.size, frame.pivot

    def moved(self, x: np.ndarray, points: np.ndarray) -> np.ndarray:
        c, s = math.cos(x[3]), math.sin(x[3])
        turn = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        stretched = (points - self.pivot) * np.exp(x[4:7])
        return (stretched @ turn.T) * math.exp(x[2]) + self.pivot + np.array([x[0], x[1], 0.0]) * self.size

    def iou(self, x: np.ndarray | None) -> float:
        x = np.zeros(len(self.X_SCALE)) if x is None else x
        return float(self.scorer.ious(silhouette_spans([(self.moved(x, self.low[0]), self.low[1])], self.camera))[0])

    def loss(self, x: np.ndarray) -> float:
        return 1.0 - self.iou(x) + self.PRIOR * float(np.sum(x**2))

    def fit(self, evaluations: int, start: np.ndarray | None = None) -> np.ndarray | None:
        """The fitted parameters (from the outline fit, or from `start`), or None where no pose beats the
        generated one (x = 0)."""
        zero = np.zeros(len(self.X_SCALE))
        if start is None:
            directions = outline_directions(8)
            side = float(max(self.camera.resolution))
            hull = _extreme_points(self.vertices, 200)
            extent, open_sides = mask_support(self.mask, self.other, directions)

            def outline(x: np.ndarray) -> np.ndarray:
                uv, depth = self.camera.project(self.moved(x, hull))
                r = ((uv @ directions.T).max(axis=0) - extent) / side
                behind = np.maximum(0.05 * self.size - depth.min(), 0.0) * 10.0
                return np.concatenate([np.where(open_sides, np.minimum(r, 0.0), r), [behind],
                                       math.sqrt(self.PRIOR) * x])

            result = least_squares(outline, zero, loss="soft_l1", f_scale=0.01, x_scale=self.X_SCALE, max_nfev=100,
                                   bounds=(-self.UPPER, self.UPPER))
            start = result.x if self.loss(result.x) < self.loss(zero) else zero
        simplex = np.vstack([start] + [start + np.eye(len(start))[k] * step for k, step in enumerate(self.SIMPLEX_STEPS)])
        result = minimize(self.loss, start, method="Nelder-Mead", bounds=list(zip(-self.UPPER, self.UPPER)),
                          options={"maxfev": evaluations, "initial_simplex": simplex, "xatol": 1e-4, "fatol": 1e-4})
        best = result.x if result.fun < self.loss(start) else start
        return best if self.loss(best) < self.loss(zero) else None

    def placed(self, x: np.ndarray | None) -> Mesh:
        return (self.vertices if x is None else self.moved(x, self.vertices), self.faces)


def silhouette_fits(placements: Sequence[Placement], masks: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per placement of the same masks, per instance: the IoU of its silhouette through the placement's camera
    with its mask, silhouette pixels on other instances' masks not counted (it may be hidden there), as
    `refine_poses` scores a pose; 0 where the instance is empty. How well each placed scene explains the picture
    (the masks' prefix sums are made once for all of them)."""
    all_masks = [np.asarray(m, bool) for m in masks]
    scorer = _SpanScorer(all_masks, other_masks(all_masks, all_masks))
    out = []
    for placement in placements:
        meshes = [None if p is None else (p.world_vertices(), p.faces) for p in placement.instances]
        ious = scorer.ious(silhouette_spans(meshes, Camera.from_dict(placement.camera)))
        out.append(np.where([m is None for m in meshes], 0.0, ious))
    return out


def refine_supported(placement: Placement, masks: Sequence[np.ndarray],
                     evaluations: int = SUPPORTED_EVALUATIONS) -> Placement:
    """Fit each instance that rests on another to its mask again, now that its support is known.

    Before placement any other instance's pixels may hide a silhouette, so a generated prop whose
    base reaches too far towards the camera is free to lie over its support's top there, and
    place_scene then rests it that far forward (about a third of the benchmark's instances rest on
    another). A support lies below and behind what rests on it and cannot hide it: here its
    pixels count against the prop. Same fit as `refine_poses` (contact height kept), through the
    placement's camera; masks pair with placement.instances. Returns a new Placement.
    """
    index = {p.id: k for k, p in enumerate(placement.instances) if p is not None}
    all_masks = [np.asarray(m, bool) for m in masks]
    hidden = other_masks(all_masks, all_masks)
    meshes: list[Mesh | None] = [None] * len(all_masks)
    for k, placed in enumerate(placement.instances):
        if placed is not None and placed.support is not None:
            meshes[k] = (placed.world_vertices(), placed.faces)
            hidden[k] = hidden[k] & ~all_masks[index[placed.support]]
    if not any(m is not None for m in meshes):
        return placement
    refined = refine_poses(meshes, all_masks, Camera.from_dict(placement.camera), evaluations, hidden=hidden).meshes
    instances = list(placement.instances)
    for k, mesh in enumerate(refined):
        if mesh is None or mesh is meshes[k]:
            continue
        instances[k] = _with_vertices(instances[k], np.asarray(mesh[0], np.float64))
    return dataclasses.replace(placement, instances=instances)


def recede_supported(placement: Placement, share: float) -> Placement:
    """The instances resting on others moved back along their camera rays by `share` of their distance from the
    camera: scaled about the camera centre, so each keeps its picture exactly, and a prop resting on a prop keeps
    its contact with it; a prop sinks into a support standing on the ground by `share` of its height below the
    camera.

    Placed props sit nearer the camera than the ground truth, relative to their supports (a median 0.19-0.30 of
    their depth on four splits), with their silhouettes on their masks: the tops they rest on come out a little
    high (about 1 % of the camera's height with the true camera), and a camera ray that meets a top at a grazing
    angle turns a small height error into a large one in depth (docs/results.md, "Props rest too near their
    supports"). Instances on the ground stay. Returns a new Placement.
    """
    if share == 0.0:
        return placement
    eye = Camera.from_dict(placement.camera).matrix_world[:3, 3]
    instances = [p if p is None or p.support is None else _with_vertices(p, eye + (p.world_vertices() - eye) * (1.0 + share))
                 for p in placement.instances]
    return dataclasses.replace(placement, instances=instances)


def fit_depths(placement: Placement, masks: Sequence[np.ndarray], image: np.ndarray) -> Placement:
    """Depth against height of the instances on the ground, where the shape or the picture tells them apart.

    Seen from above, a silhouette trades an object's depth for its height: deeper and lower, the top of its
    outline (a box's back-top edge, a cone's apex) stays on the same camera ray and the outline barely
    changes. Two cues settle it, each applied as a new depth about the instance's front with the height that
    keeps the top of its outline on its ray (`_with_depth`):
    - a round footprint (a cylinder, a sphere, a round table; `_is_round`) is as deep as it is wide, and
      its width is what the mask gives best;
    - otherwise a flat top (FLAT_TOP_FRACTION), whose front edge, inside the outline, the picture shows: a
      lit top is one colour, the front another. Its depth times exp(TOP_DEPTH_FACTORS) is tried, and the
      one kept is the one whose projected top faces split the mask's colours (image: (H, W, 3)) into the
      two most uniform parts.
    Instances resting on a changed one follow its top along the camera rays. Returns a new Placement in the
    same frame (+Y away from the camera).
    """
    camera = Camera.from_dict(placement.camera)
    eye = camera.matrix_world[:3, 3]
    colours = np.asarray(image, np.float64).reshape(-1, 3)
    instances = list(placement.instances)
    world = {k: p.world_vertices() for k, p in enumerate(instances) if p is not None}
    top_moved: dict[int, tuple[float, float]] = {}  # instance id -> its top's height before and after
    for k in sorted(world, key=lambda i: world[i][:, 2].min()):  # supports before what rests on them
        placed, vertices = instances[k], world[k]
        if placed.support is not None:
            if placed.support in top_moved:  # along the camera rays onto its support's new top
                old, new = top_moved[placed.support]
                moved = _along_rays(vertices, eye, vertices[:, 2].min() + new - old)
                if moved is not None:
                    top_moved[placed.id] = (vertices[:, 2].max(), moved[0][:, 2].max())
                    instances[k] = _with_vertices(placed, moved[0])
            continue
        if eye[2] <= vertices[:, 2].max():  # a camera below the top sees no top: nothing to settle
            continue
        if _is_round(vertices):
            extent = vertices.max(axis=0) - vertices.min(axis=0)
            factor = math.log(extent[0] / extent[1])
            fitted = _with_depth(vertices, eye, factor) if abs(factor) > ROUND_FACTOR_MIN else None
        else:
            fitted = _fit_flat_top(vertices, placed.faces, np.asarray(masks[k], bool), colours, camera, eye)
        if fitted is not None:
            top_moved[placed.id] = (vertices[:, 2].max(), fitted[:, 2].max())
            instances[k] = _with_vertices(placed, fitted)
    return dataclasses.replace(placement, instances=instances)


def _is_round(vertices: np.ndarray) -> bool:
    """Whether the instance's footprint (the convex hull of its vertices seen from above) is close to a circle."""
    xy = vertices[:, :2]
    if len(xy) < 3 or np.ptp(xy, axis=0).min() <= 0:
        return False
    try:
        hull = ConvexHull(xy)
    except QhullError:  # all in a line
        return False
    spans = xy[hull.vertices] @ outline_directions(72).T  # every 5 degrees
    widths = spans.max(axis=0) - spans.min(axis=0)
    ellipse_area = math.pi / 4.0 * widths.max() * widths.min()
    return bool(widths.max() <= ROUND_WIDTH_RATIO * widths.min()
                and abs(hull.volume / ellipse_area - 1.0) <= ROUND_AREA_TOLERANCE)


def _with_depth(vertices: np.ndarray, eye: np.ndarray, factor: float) -> np.ndarray | None:
    """The instance with its depth times exp(factor) about its front and the height that keeps the top of its
    outline on its camera ray (the point seen highest: a box's back-top edge, a cone's apex); its bottom stays.
    None when that leaves it no height. The camera is above the instance and in front of it (+Y away)."""
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    height = hi[2] - lo[2]
    ahead = vertices[:, 1] - eye[1]
    if height <= 0 or hi[1] <= lo[1] or ahead.min() <= 0:
        return None
    top = vertices[np.argmax((vertices[:, 2] - eye[2]) / ahead)]
    depth_scale = math.exp(factor)
    top_y = lo[1] + (top[1] - lo[1]) * depth_scale
    top_z = eye[2] + (top_y - eye[1]) / (top[1] - eye[1]) * (top[2] - eye[2])  # the same ray
    if top[2] - lo[2] <= FLAT_TOP_BAND * height or top_z <= lo[2] + FLAT_TOP_BAND * (top[2] - lo[2]):
        return None
    out = vertices.copy()
    out[:, 1] = lo[1] + (vertices[:, 1] - lo[1]) * depth_scale
    out[:, 2] = lo[2] + (vertices[:, 2] - lo[2]) * (top_z - lo[2]) / (top[2] - lo[2])
    return out


def _fit_flat_top(vertices: np.ndarray, faces: np.ndarray, mask: np.ndarray, colours: np.ndarray, camera: Camera,
                  eye: np.ndarray) -> np.ndarray | None:
    """fit_depths' shading cue for one instance: its new vertices, or None when it has no flat top or keeps its
    depth."""
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    height = hi[2] - lo[2]
    if height <= 0 or hi[1] <= lo[1] or mask.sum() < 200:
        return None
    corners = vertices[faces]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    horizontal_area = np.abs(normals[:, 2]) / 2.0  # each face's area projected onto the ground
    near_top = corners[:, :, 2].mean(axis=1) > hi[2] - FLAT_TOP_BAND * height
    top = near_top & (horizontal_area > 0.9 * np.linalg.norm(normals, axis=1) / 2.0)
    if horizontal_area[top].sum() < FLAT_TOP_FRACTION * (hi[0] - lo[0]) * (hi[1] - lo[1]):
        return None
    pixels = colours[mask.reshape(-1)]
    if np.ptp(pixels, axis=0).max() == 0:  # one flat colour: nothing to split
        return None
    best, best_cost = None, np.inf
    for factor in TOP_DEPTH_FACTORS:
        candidate = _with_depth(vertices, eye, factor)
        if candidate is None:
            continue
        on_top = render_silhouettes([(candidate, faces[top])], camera)[0][mask]
        if on_top.sum() < 30 or (~on_top).sum() < 30:
            continue
        cost = sum(float(((part - part.mean(axis=0)) ** 2).sum()) for part in (pixels[on_top], pixels[~on_top]))
        if cost < best_cost:
            best, best_cost = (None if factor == 0.0 else candidate), cost
    return best


def _with_vertices(placed: PlacedInstance, world: np.ndarray) -> PlacedInstance:
    local, transform = _at_bottom_centre(world)
    return dataclasses.replace(placed, vertices=local, transform=transform)


def _framing_camera(vertices: np.ndarray, cfg: CameraSolveConfig, image_size: tuple[int, int]) -> Camera:
    """No mesh has a mask to fit: a camera at the prior pitch and fov that frames the scene's bounding sphere."""
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    radius = max(float(np.linalg.norm(hi - lo)) / 2.0, 1e-9)
    half_fov = math.atan(math.tan(math.radians(cfg.prior_fov_deg) / 2.0) * min(image_size) / max(image_size))  # narrower side
    probe = camera_from_params(cfg.prior_pitch_deg, cfg.prior_fov_deg, (0.0, 0.0, 0.0), image_size)
    position = (lo + hi) / 2.0 + probe.matrix_world[:3, 2] * radius / math.sin(half_fov)
    return camera_from_params(cfg.prior_pitch_deg, cfg.prior_fov_deg, position, image_size)


def _extreme_points(vertices: np.ndarray, directions: int) -> np.ndarray:
    """Vertices that are extreme along a spread of directions: enough to get a projection's 2D box."""
    try:
        hull = vertices[ConvexHull(vertices).vertices]
    except (QhullError, ValueError):  # flat or tiny meshes
        hull = vertices
    if len(hull) <= directions:
        return hull
    k = np.arange(directions) + 0.5
    z = 1.0 - 2.0 * k / directions
    phi = k * math.pi * (3.0 - math.sqrt(5.0))
    r = np.sqrt(1.0 - z * z)
    dirs = np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)
    return hull[np.unique(np.argmax(hull @ dirs.T, axis=0))]


def _pixel_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(first column, first row, end column, end row) of the mask's pixels."""
    cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _decimate(vertices: np.ndarray, faces: np.ndarray, max_faces: int) -> Mesh:
    """Vertex-clustering decimation for fast silhouettes (`silhouette_kernels.cluster_vertices`)."""
    return cluster_vertices(np.ascontiguousarray(vertices, np.float64), np.ascontiguousarray(faces, np.int64), max_faces)


def place_scene(
    meshes: Sequence[Mesh | None],
    masks: Sequence[np.ndarray],
    image_size: tuple[int, int],
    scene_size_m: float | None = None,
    ids: Sequence[int] | None = None,
    camera: Camera | None = None,
    config: CameraSolveConfig | None = None,
    level_floor: bool = True,
) -> Placement:
    """Solve the camera (unless given), stand the instances on the ground and their supports, scale to metres.

    meshes are in the view frame (any origin and scale), paired with masks
    ((H, W) bool); a given camera is in the same frame. Levelling (level_floor): a floor
    tilted by MIN_TILT_DEG to MAX_TILT_DEG is rotated level (off for a frame upright by construction, such
    as the default model's, where a tilt fitted to imperfect bottoms would only turn the scene;
    docs/results.md, "Pose refinement and levelling"); a camera with a
    yaw (gravity-aligned input solved with `solve_yaw`) has the scene turned
    about +Z to face it. Ground: the horizontal plane at the median bottom
    height of the instances within FLOOR_FRACTION of the lowest one; it ends
    at z = 0.
    Supports: from the lowest instance upwards, an instance within
    SNAP_FRACTION of the ground stands on it; any other comes to rest on the
    ground or on an already placed instance (blockout scenes have nothing
    hanging). Moves go along the rays through the camera centre (a scaling
    about it) where they can, so that its picture stays where its mask is:
    when it can rest on placed instances that way, the one (or the ground)
    needing the least change of distance wins (a prop generated below a
    table top, along the ray to it, comes onto the table rather than falling
    to the floor), unless that is an instance and the one whose mask the
    picture shows just below the instance's is another of them
    (`_pictured_supports`); otherwise it falls straight down onto the first instance
    below it, or, with none, is lifted onto the top of a placed instance whose
    box it is inside (a generated top with holes), or, outside any, slides along
    the rays to the ground. A surface
    up to SNAP_FRACTION above its bottom counts too, so an instance sunk
    into its support is lifted.
    Scale: the larger horizontal side of the scene box becomes scene_size_m
    (DEFAULT_SCENE_SIZE_M when None).
    """
    ids = list(ids) if ids is not None else list(range(1, len(meshes) + 1))
    if len(ids) != len(meshes) or len(masks) != len(meshes):
        raise ValueError("meshes, masks and ids must have the same length")
    usable = [i for i, m in enumerate(meshes) if _usable(m)]
    if not usable:
        raise ValueError("nothing to place: every mesh is empty")
    faces = {i: np.asarray(meshes[i][1], np.int64) for i in usable}
    # Level a slightly tilted floor first (the camera solve assumes no roll), then turn the scene about +Z
    # so the camera looks along +Y (a no-op for view-frame input, whose camera has no yaw).
    tilt, tilt_deg = _ground_levelling({i: np.asarray(meshes[i][0], np.float64) for i in usable})
    if not level_floor:
        tilt = np.eye(4)
    solve_info: dict[str, Any] = {}
    if camera is None:
        levelled = [None if i not in faces else (np.asarray(m[0], np.float64) @ tilt[:3, :3].T, faces[i]) for i, m in enumerate(meshes)]
        camera, solve_info = solve_camera(levelled, masks, image_size, config)
        camera = Camera(tilt.T @ camera.matrix_world, camera.fov_deg, camera.resolution, camera.sensor_fit)
    level = view_frame_transform(tilt @ camera.matrix_world) @ tilt
    vertices = {i: np.asarray(meshes[i][0], np.float64) @ level[:3, :3].T for i in usable}
    stacked = np.concatenate(list(vertices.values()))
    lo, hi = stacked.min(axis=0), stacked.max(axis=0)
    size = max(float((hi - lo).max()), 1e-12)
    bottoms = {i: float(vertices[i][:, 2].min()) for i in usable}
    floor = _floor_instances(bottoms, size)
    ground = float(np.median([bottoms[i] for i in floor]))

    tolerance = SNAP_FRACTION * size
    eye = level[:3, :3] @ camera.matrix_world[:3, 3] + level[:3, 3]  # the camera centre, levelled
    pictured = _pictured_supports(masks)
    moved: dict[int, np.ndarray] = {}  # the instances as placed, input units
    support: dict[int, int | None] = {}
    for i in sorted(usable, key=lambda k: bottoms[k]):
        moved[i], support[i] = _rest(vertices[i], ground, eye, {j: (moved[j], faces[j]) for j in moved},
                                     tolerance, size, pictured[i])
    shift = {i: float(moved[i][:, 2].min()) - bottoms[i] for i in usable}  # how far each bottom moved

    footprint = hi[:2] - lo[:2]
    scale = (scene_size_m or DEFAULT_SCENE_SIZE_M) / max(float(footprint.max()), 1e-12)
    scene_from_level = np.diag([scale, scale, scale, 1.0])
    scene_from_level[:3, 3] = -scale * np.array([(lo[0] + hi[0]) / 2.0, (lo[1] + hi[1]) / 2.0, ground])

    instances: list[PlacedInstance | None] = [None] * len(meshes)
    for i in usable:
        local, transform = _at_bottom_centre(moved[i] @ scene_from_level[:3, :3].T + scene_from_level[:3, 3])
        instances[i] = PlacedInstance(
            id=ids[i],
            vertices=local,
            faces=faces[i].astype(np.int32),
            transform=transform,
            support=None if support[i] is None else ids[support[i]],
            snap_m=shift[i] * scale,
        )

    scene_from_input = scene_from_level @ level
    scene_camera = level @ camera.matrix_world  # rotation only: keeps the camera matrix free of scale
    scene_camera[:3, 3] = scene_from_input[:3, :3] @ camera.matrix_world[:3, 3] + scene_from_input[:3, 3]
    diagnostics = {
        **solve_info,
        "scene_size_m": float(scene_size_m or DEFAULT_SCENE_SIZE_M),
        "scale_m_per_unit": scale,
        "ground_height_levelled": ground,  # in input units, after the levelling rotation
        "ground_tilt_deg": tilt_deg,  # the floor fit's tilt, corrected only between the bounds and with level_floor
        "ground_levelled": bool(not np.allclose(tilt, np.eye(4))),
        "floor_ids": [ids[i] for i in floor],
        "dropped_ids": [ids[i] for i in usable if shift[i] < -tolerance],  # fell farther than SNAP_FRACTION
        "empty_ids": [ids[i] for i in range(len(meshes)) if i not in vertices],
    }
    return Placement(
        instances=instances,
        camera=Camera(scene_camera, camera.fov_deg, camera.resolution, camera.sensor_fit).to_dict(),
        input_camera=camera.to_dict(),
        scene_from_input=scene_from_input,
        diagnostics=diagnostics,
    )


def _at_bottom_centre(world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scene-frame vertices -> (local float32 vertices, the translation to their bottom centre as a 4x4 matrix)."""
    vmin, vmax = world.min(axis=0), world.max(axis=0)
    transform = np.eye(4)
    transform[:3, 3] = [(vmin[0] + vmax[0]) / 2.0, (vmin[1] + vmax[1]) / 2.0, vmin[2]]
    return (world - transform[:3, 3]).astype(np.float32), transform


def _rest(vertices: np.ndarray, ground: float, eye: np.ndarray, placed: dict[int, tuple[np.ndarray, np.ndarray]],
          tolerance: float, size: float, pictured: int | None = None) -> tuple[np.ndarray, int | None]:
    """Where one instance comes to rest (its vertices) and on what (a placed instance's key, None: the ground);
    see place_scene."""
    bottom = float(vertices[:, 2].min())

    def along_ray(height: float) -> tuple[np.ndarray, float] | None:
        moved = _along_rays(vertices, eye, height)
        return None if moved is None else (moved[0], abs(math.log(moved[1])))

    if abs(bottom - ground) <= tolerance:
        slid = along_ray(ground)
        return (vertices + [0.0, 0.0, ground - bottom] if slid is None else slid[0]), None
    to_ground = along_ray(ground)
    options: list[tuple[float, np.ndarray, int | None]] = []
    for j, (other, other_faces) in placed.items():
        height = float(other[:, 2].max())
        for _ in range(3):  # down onto the surface of `other` under the instance (a table's recessed top)
            if (slid := along_ray(height)) is None:
                break
            drop = _drop_distance(_bottom_points(slid[0], 0.01 * size), other, other_faces, tolerance)
            if drop is None or drop < -tolerance:
                break
            if drop <= tolerance:
                options.append((slid[1], slid[0] - [0.0, 0.0, drop], j))
                break
            height -= drop
    if options:  # an instance to rest on along the rays: the nearest of those and the ground
        if to_ground is not None:
            options.append((to_ground[1], to_ground[0], None))
        _, rested, on = min(options, key=lambda o: o[0])
        shown = [o for o in options if pictured is not None and o[2] == pictured]
        if on is not None and shown:  # another instance, but the picture shows it resting on this one
            _, rested, on = shown[0]
        return rested, on
    best_drop, best_support = bottom - ground, None  # else what is straight below
    points = _bottom_points(vertices, 0.01 * size)
    for j, (other, other_faces) in placed.items():
        drop = _drop_distance(points, other, other_faces, tolerance)
        if drop is not None and drop < best_drop:
            best_drop, best_support = drop, j
    if best_support is None:
        # Inside a placed instance's box, over none of its surfaces (a generated top with holes, or a support
        # enlarged by its pose fit): up onto that box's top, not far away along the rays to the ground.
        tops = {j: float(other[:, 2].max()) for j, (other, _) in placed.items()}
        below_top = [(tops[j], j) for j, (other, _) in placed.items() if tops[j] > bottom and _over_footprint(points, other)]
        if below_top:
            top, j = min(below_top)
            return vertices + [0.0, 0.0, top - bottom], j
    if best_support is None and to_ground is not None:
        return to_ground[0], None
    return vertices - [0.0, 0.0, best_drop], best_support


def _pictured_supports(masks: Sequence[np.ndarray]) -> list[int | None]:
    """Per instance, the index of the instance the picture shows it resting on, or None: the one whose mask lies
    just below (within RESTING_GAP of the image's height) the most columns of its bottom outline, at least
    RESTING_SHARE of them. A prop's support shows there (114 of 118 props of dev and the project's splits); so
    does whatever stands in front of an instance and hides its bottom, which is why `_rest` only uses it to
    choose among the instances the rays reach, never over the ground."""
    stack = np.asarray([np.asarray(m, bool) for m in masks])
    if stack.ndim != 3 or len(stack) == 0:
        return [None] * len(masks)
    height = stack.shape[1]
    gap = max(1, round(RESTING_GAP * height))
    out: list[int | None] = []
    for i, mask in enumerate(stack):
        cols = np.flatnonzero(mask.any(axis=0))
        if len(cols) == 0:
            out.append(None)
            continue
        lowest = height - 1 - np.argmax(mask[::-1, cols], axis=0)
        rows = np.clip(lowest[None, :] + np.arange(1, gap + 1)[:, None], 0, height - 1)  # (gap, columns)
        below = stack[:, rows, cols[None, :]].any(axis=1)  # (instances, columns)
        below[i] = False
        shares = below.mean(axis=1)
        best = int(np.argmax(shares))
        out.append(best if shares[best] >= RESTING_SHARE else None)
    return out


def _along_rays(vertices: np.ndarray, eye: np.ndarray, bottom_height: float) -> tuple[np.ndarray, float] | None:
    """The instance scaled about the camera centre until its bottom is at bottom_height, so its picture stays,
    and the scale; None when that takes it behind the camera or more than 5 times nearer or farther."""
    bottom = float(vertices[:, 2].min())
    scale = (bottom_height - eye[2]) / (bottom - eye[2]) if abs(bottom - eye[2]) > 1e-12 else -1.0
    if not 0.2 <= scale <= 5.0:
        return None
    return eye + (vertices - eye) * scale, scale


def _over_footprint(points: np.ndarray, vertices: np.ndarray) -> bool:
    """The points' centre lies over the mesh's horizontal bounding box, away from its edges by a tenth of it."""
    lo, hi = vertices[:, :2].min(axis=0), vertices[:, :2].max(axis=0)
    margin = 0.1 * (hi - lo)
    centre = points[:, :2].mean(axis=0)
    return bool(np.all(centre >= lo + margin) and np.all(centre <= hi - margin))


def _floor_instances(bottoms: dict[int, float], size: float, fraction: float = FLOOR_FRACTION) -> list[int]:
    """Instances whose lowest point is within `fraction` of the scene size of the lowest one."""
    lowest = min(bottoms.values())
    return [i for i, b in bottoms.items() if b - lowest <= fraction * size]


def _ground_levelling(vertices: dict[int, np.ndarray], iterations: int = 3) -> tuple[np.ndarray, float]:
    """Rotation (4x4) that levels the plane through the floor instances' contact points, and its angle in degrees.

    Identity when the contact points do not spread in two horizontal
    directions (a standard deviation of 5 % of the scene size each way), or when the plane's
    tilt is outside [MIN_TILT_DEG, MAX_TILT_DEG]. Each
    instance's contact points count equally; floor membership is re-decided
    after each levelling step (the first with a band three times as wide).
    """
    rotation = np.eye(3)
    all_points = np.concatenate(list(vertices.values()))
    size = max(float(np.ptp(all_points, axis=0).max()), 1e-12)
    for step in range(iterations):
        turned = {i: v @ rotation.T for i, v in vertices.items()}
        # The first fit takes a wider band: a tilt lifts the far floor objects (10 deg over the scene: 17 %).
        band = 3.0 * FLOOR_FRACTION if step == 0 else FLOOR_FRACTION
        floor = _floor_instances({i: float(v[:, 2].min()) for i, v in turned.items()}, size, band)
        points = np.concatenate([_bottom_points(turned[i], 0.01 * size, limit=16, spread=True) for i in floor])
        centred = points - points.mean(axis=0)
        if np.linalg.eigvalsh(centred[:, :2].T @ centred[:, :2] / len(points))[0] < (0.05 * size) ** 2:
            break
        slope = np.linalg.lstsq(centred[:, :2], centred[:, 2], rcond=None)[0]
        normal = np.array([-slope[0], -slope[1], 1.0]) / math.hypot(1.0, *slope)
        axis = np.cross(normal, [0.0, 0.0, 1.0])
        angle = math.asin(min(float(np.linalg.norm(axis)), 1.0))
        if angle < 1e-9:
            break
        k = axis / np.linalg.norm(axis)
        cross = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
        rotation = (np.eye(3) + math.sin(angle) * cross + (1.0 - math.cos(angle)) * cross @ cross) @ rotation
    tilt_deg = math.degrees(math.acos(min(rotation[2, 2], 1.0)))
    out = np.eye(4)
    if MIN_TILT_DEG <= tilt_deg <= MAX_TILT_DEG:
        out[:3, :3] = rotation
    return out, tilt_deg


def _bottom_points(vertices: np.ndarray, band: float, limit: int = 64, spread: bool = False) -> np.ndarray:
    """The vertices within `band` of the mesh's lowest point (at most `limit`): where it touches a support.

    With `spread`, exactly `limit` points (repeated if fewer), so that every instance weighs the same in a fit.
    """
    low = vertices[vertices[:, 2] <= vertices[:, 2].min() + band]
    if len(low) > limit or spread:
        low = low[np.linspace(0, len(low) - 1, limit).round().astype(np.int64)]
    return low


def _drop_distance(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray, tolerance: float) -> float | None:
    """How far `points` fall straight down before touching the mesh (negative: they sit up to `tolerance` inside it).

    For each point, the highest surface of the mesh under it that is not more
    than `tolerance` above it; the smallest gap over the points is the drop.
    None when no point has any surface under it.
    """
    tri = vertices[faces]  # (F, 3, 3)
    top = points[:, 2].max() + tolerance
    pmin, pmax = points[:, :2].min(axis=0), points[:, :2].max(axis=0)
    keep = (tri[:, :, 2].min(axis=1) <= top) & (tri[:, :, :2].min(axis=1) <= pmax).all(axis=1) & (tri[:, :, :2].max(axis=1) >= pmin).all(axis=1)
    tri = tri[keep]
    if len(tri) == 0:
        return None
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    e1, e2 = (b - a)[:, :2], (c - a)[:, :2]
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    ok = np.abs(det) > 1e-18
    a, e1, e2, det, dz1, dz2 = a[ok], e1[ok], e2[ok], det[ok], (b - a)[ok, 2], (c - a)[ok, 2]
    rel = points[:, None, :2] - a[None, :, :2]  # (P, F, 2)
    u = (rel[..., 0] * e2[:, 1] - rel[..., 1] * e2[:, 0]) / det
    v = (e1[:, 0] * rel[..., 1] - e1[:, 1] * rel[..., 0]) / det
    inside = (u >= -1e-9) & (v >= -1e-9) & (u + v <= 1.0 + 1e-9)
    z = a[:, 2] + u * dz1 + v * dz2
    below = inside & (z <= points[:, None, 2] + tolerance)
    if not below.any():
        return None
    height = np.where(below, z, -np.inf).max(axis=1)
    hit = np.isfinite(height)
    return float((points[hit, 2] - height[hit]).min())
