"""Seeded random blockout scenes: objects, support, colours, light and camera (no bpy).

In the spirit of I-Scene's non-semantic random scenes: the arrangements teach
spatial relations (resting on, side by side, in front of / behind with
partial occlusion, near-symmetric rows) rather than semantics. Everything is
a pure function of the seed, so a case can be re-made from its scene.json.

Layout frame: objects are arranged with the viewer on the -Y side; the whole
layout is then turned by a random yaw into the world frame, and the camera is
placed relative to it. Ground objects have disjoint footprints (oriented
rectangles with a gap) and objects resting on another lie inside its top
rectangle, so no two objects interpenetrate.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import trimesh

from ..camera import Camera
from .shapes import GROUND_SIZE, PROP_SIZE, PRIMITIVES, Shape, SupportTop, make_shape

FOV_DEG = (35.0, 60.0)
ELEVATION_DEG = (10.0, 45.0)
FILL = (0.45, 0.88)  # longest side of the scene's image bounding box / image side
# Where most cameras fall (the benchmark's dev cases: fov 38-54, elevation 17-38, fill 0.62-0.87).
FOV_CORE, ELEVATION_CORE, FILL_CORE = (38.0, 55.0), (15.0, 40.0), (0.6, 0.88)
MAX_OBJECTS = 8
STYLES = ("front_behind", "support", "side_by_side", "scatter", "symmetric", "desk", "dining", "cluster")
_STYLE_WEIGHTS = (0.23, 0.2, 0.14, 0.12, 0.08, 0.1, 0.05, 0.08)
_GROUND_LABELS = ("table", "box", "cylinder", "cabinet", "sphere", "stool", "chair", "sofa", "cone", "capsule",
                  "wedge", "lamp", "shelf", "bed", "torus")
_GROUND_WEIGHTS = (12, 10, 8, 7, 7, 6, 3, 5, 4, 3, 5, 4, 3, 3, 2)
_PROP_LABELS = ("box", "cylinder", "sphere", "cone", "capsule", "torus", "wedge", "lamp", "monitor-on-stand")
_PROP_WEIGHTS = (10, 8, 6, 4, 3, 3, 4, 4, 6)
_GAP = 0.03  # minimum clearance between ground footprints, metres


@dataclass(frozen=True)
class PropRules:
    """What props rest on, and how big they are: the one place where this generator's variants differ."""

    supports: tuple[str, ...]  # ground objects made to hold props (the support style stands one or two up)
    other_host_weight: float  # any other object with a top hosts a prop this often against a support;
    # 0: only when the scene has no support or stacked prop
    prop_size: tuple[float, float]  # longest side of a primitive prop, metres
    never_hosts: tuple[str, ...] = ()  # objects whose top holds nothing


# The default scenes (the shipped model's training data): props on tables, cabinets, shelves and stools.
DEFAULT_PROPS = PropRules(("table", "cabinet", "shelf", "stool"), 0.0, PROP_SIZE, never_hosts=("bed",))
# Closer to the benchmark's other generators: props on beds too, on boxes and cylinders a third as often as on a
# support, and smaller (docs/results.md, "What limits IoU-B"): the pose head's extra training scenes.
VARIED_PROPS = PropRules(("table", "cabinet", "shelf", "stool", "bed"), 1 / 3, (0.08, 0.32))
PROP_RULES = {"default": DEFAULT_PROPS, "varied": VARIED_PROPS}


@dataclass
class SceneObject:
    label: str
    mesh: trimesh.Trimesh  # shape frame: resting on z = 0
    matrix_world: np.ndarray  # (4, 4) shape frame -> world
    support: int | None  # index of the object it rests on
    color: tuple[float, float, float]  # diffuse base colour, linear RGB
    top: SupportTop | None = None

    def world_mesh(self) -> trimesh.Trimesh:
        mesh = self.mesh.copy()
        mesh.apply_transform(self.matrix_world)
        return mesh


@dataclass
class Lighting:
    sun_direction: tuple[float, float, float]  # unit vector pointing from the scene towards the sun
    sun_strength: float  # W/m^2 (Blender sun strength)
    sun_angle_deg: float  # angular diameter: soft shadow edges
    sky_color: tuple[float, float, float]  # linear RGB of the uniform world light
    sky_strength: float
    ground_color: tuple[float, float, float]  # linear RGB


@dataclass
class SceneDescription:
    seed: int
    objects: list[SceneObject]
    camera: Camera
    lighting: Lighting
    style: str
    tags: list[str] = field(default_factory=list)
    ground_z: float = 0.0
    elevation_deg: float = 0.0
    fill: float = 0.0

    @property
    def labels(self) -> list[str]:
        return [o.label for o in self.objects]


def _rot_z(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    m = np.eye(4)
    m[:2, :2] = [[c, -s], [s, c]]
    return m


def _pose(x: float, y: float, z: float, yaw: float) -> np.ndarray:
    m = _rot_z(yaw)
    m[:3, 3] = (x, y, z)
    return m


def _footprint(mesh: trimesh.Trimesh, matrix: np.ndarray) -> np.ndarray:
    """Corners (4, 2) of the object's oriented xy bounding rectangle in the parent frame."""
    (x0, y0, _), (x1, y1, _) = mesh.bounds
    corners = np.array([[x0, y0, 0, 1], [x1, y0, 0, 1], [x1, y1, 0, 1], [x0, y1, 0, 1]], dtype=np.float64)
    return (corners @ matrix.T)[:, :2]


def _rects_overlap(a: np.ndarray, b: np.ndarray, gap: float) -> bool:
    """Separating-axis test for two convex quads, grown by gap/2 each."""
    for quad in (a, b):
        for k in range(4):
            edge = quad[(k + 1) % 4] - quad[k]
            axis = np.array([-edge[1], edge[0]])
            axis /= np.linalg.norm(axis) + 1e-12
            pa, pb = a @ axis, b @ axis
            if pa.max() + gap <= pb.min() or pb.max() + gap <= pa.min():
                return False
    return True


class _Layout:
    """Objects being placed in the layout frame, with the checks that keep them apart."""

    def __init__(self, rng: np.random.Generator, props: PropRules = DEFAULT_PROPS):
        self.rng = rng
        self.props = props
        self.objects: list[SceneObject] = []

    def _color(self) -> tuple[float, float, float]:
        rng = self.rng
        if rng.random() < 0.08:  # greys, from near-black to off-white
            v = rng.uniform(0.15, 0.9)
            srgb = (v, v, v)
        else:
            srgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.5, 0.95), rng.uniform(0.5, 0.95))
        return tuple(float(c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4) for c in srgb)

    def free_on_ground(self, shape: Shape, matrix: np.ndarray) -> bool:
        quad = _footprint(shape.mesh, matrix)
        return not any(
            _rects_overlap(quad, _footprint(o.mesh, o.matrix_world), _GAP) for o in self.objects if o.support is None
        )

    def place_ground(
        self, shape: Shape, x: float, y: float, yaw: float, push: tuple[float, float] | None = None
    ) -> int | None:
        """Put a shape on the ground at (x, y), sliding it along `push` (default: away from the origin) until free."""
        if push is None:
            push = (x, y) if abs(x) + abs(y) > 1e-6 else (self.rng.normal(), self.rng.normal())
        d = np.asarray(push, dtype=np.float64)
        d /= np.linalg.norm(d) + 1e-12
        for step in range(60):
            m = _pose(x + d[0] * 0.05 * step, y + d[1] * 0.05 * step, 0.0, yaw)
            if self.free_on_ground(shape, m):
                return self._add(shape, m, None)
        return None

    def place_on(self, shape: Shape, support: int, tries: int = 30, where: tuple[float, float] | None = None,
                 yaw: float | None = None) -> int | None:
        """Rest a shape on another's top, fully inside the top rectangle, clear of what already rests there."""
        base = self.objects[support]
        top = base.top
        if top is None:
            return None
        for _ in range(tries):
            a = self.rng.uniform(-np.pi, np.pi) if yaw is None else yaw
            local = _pose(0.0, 0.0, 0.0, a)
            quad = _footprint(shape.mesh, local)
            lo, hi = quad.min(axis=0), quad.max(axis=0)
            room_x = (top.half_x - (hi[0] - lo[0]) / 2, top.half_y - (hi[1] - lo[1]) / 2)
            if room_x[0] < 0 or room_x[1] < 0:
                continue
            if where is None:
                px, py = (self.rng.uniform(-r, r) for r in room_x)
            else:
                px, py = where[0] * room_x[0], where[1] * room_x[1]
            x = top.center_x + px - (hi[0] + lo[0]) / 2
            y = top.center_y + py - (hi[1] + lo[1]) / 2
            m_local = _pose(x, y, top.z, a)
            quad = _footprint(shape.mesh, m_local)
            siblings = [o for o in self.objects if o.support == support]
            rel = np.linalg.inv(base.matrix_world)
            if any(_rects_overlap(quad, _footprint(o.mesh, rel @ o.matrix_world), 0.01) for o in siblings):
                continue
            return self._add(shape, base.matrix_world @ m_local, support)
        return None

    def _add(self, shape: Shape, matrix: np.ndarray, support: int | None) -> int:
        self.objects.append(SceneObject(shape.label, shape.mesh, matrix, support, self._color(), shape.top))
        return len(self.objects) - 1


def _pick(rng: np.random.Generator, labels: Sequence[str], weights: Sequence[float]) -> str:
    w = np.asarray(weights, dtype=np.float64)
    return str(labels[int(rng.choice(len(labels), p=w / w.sum()))])


def _ground_shape(rng: np.random.Generator, label: str | None = None) -> Shape:
    label = label or _pick(rng, _GROUND_LABELS, _GROUND_WEIGHTS)
    size = float(rng.uniform(*GROUND_SIZE)) if label in PRIMITIVES else None
    return make_shape(label, rng, size)


def _prop_shape(rng: np.random.Generator, top: SupportTop, prop_size: tuple[float, float]) -> Shape:
    label = _pick(rng, _PROP_LABELS, _PROP_WEIGHTS)
    room = 2 * min(top.half_x, top.half_y)
    if label == "lamp":
        return make_shape("lamp", rng, float(rng.uniform(0.3, 0.55)))
    if label == "monitor-on-stand" and room >= 0.3:
        return make_shape(label, rng)
    if label not in PRIMITIVES:  # a monitor without room for it
        label = "box"
    size = float(rng.uniform(prop_size[0], min(prop_size[1], max(prop_size[0], room * 0.9))))
    return make_shape(label, rng, size)


def _yaw(rng: np.random.Generator, aligned: bool) -> float:
    """Facing the viewer (with a little jitter) or any direction."""
    if aligned:
        return float(rng.choice((0.0, 0.0, 0.5 * np.pi, -0.5 * np.pi)) + rng.normal(0.0, 0.08))
    return float(rng.uniform(-np.pi, np.pi))


def _add_props(lay: _Layout, count: int, stack: bool = False) -> None:
    rng, rules = lay.rng, lay.props
    for _ in range(count * 3):
        if count <= 0 or len(lay.objects) >= MAX_OBJECTS:
            return
        hosts = [i for i, o in enumerate(lay.objects)
                 if o.top is not None and o.label not in rules.never_hosts and (o.support is None or stack)]
        if not hosts:
            return
        big = [i for i in hosts if lay.objects[i].label in rules.supports or lay.objects[i].support is not None]
        if rules.other_host_weight == 0:
            host = int(rng.choice(big or hosts))
        else:
            weights = np.array([1.0 if i in big else rules.other_host_weight for i in hosts])
            host = int(rng.choice(hosts, p=weights / weights.sum()))
        if lay.place_on(_prop_shape(rng, lay.objects[host].top, rules.prop_size), host) is not None:
            count -= 1


def _style_row(lay: _Layout, n: int, depth: bool) -> None:
    """Side by side along x, or (depth) in rows receding along +y, offset so they partly hide each other."""
    rng = lay.rng
    x = 0.0
    for k in range(n):
        shape = _ground_shape(rng)
        ext = shape.extents
        if depth:
            y = k * rng.uniform(0.5, 1.1) * max(ext[:2].max(), 0.4)
            px = rng.uniform(-0.5, 0.5) * max(ext[0], 0.4)
            lay.place_ground(shape, px, y, _yaw(rng, rng.random() < 0.6), push=(rng.choice((-1, 1)) * 0.3, 1.0))
        else:
            lay.place_ground(shape, x + ext[0] / 2, rng.normal(0, 0.1), _yaw(rng, True), push=(1.0, 0.0))
            x += ext[0] + rng.uniform(0.05, 0.4)


def _style_scatter(lay: _Layout, n: int, radius: float = 1.5) -> None:
    """Random spots within `radius`; a small radius packs a cluster whose members hide each other (harder cases)."""
    rng = lay.rng
    for _ in range(n):
        r = rng.uniform(0.0, radius)
        a = rng.uniform(-np.pi, np.pi)
        lay.place_ground(_ground_shape(rng), r * np.cos(a), r * np.sin(a), _yaw(rng, False))


def _style_symmetric(lay: _Layout, n: int) -> None:
    """A centre piece with mirrored identical pairs, or a row of identical objects."""
    rng = lay.rng
    if rng.random() < 0.5:
        centre = _ground_shape(rng, str(rng.choice(("table", "cabinet", "sofa", "bed", "shelf", "box"))))
        lay.place_ground(centre, 0.0, 0.0, rng.normal(0, 0.03))
        pair = _ground_shape(rng, str(rng.choice(("lamp", "cylinder", "stool", "box", "chair", "cabinet", "sphere"))))
        off = centre.extents[0] / 2 + pair.extents[:2].max() / 2 + rng.uniform(0.1, 0.4)
        yaw = _yaw(rng, True)
        for side in (-1, 1):
            lay.place_ground(pair, side * off, rng.normal(0, 0.02), side * yaw, push=(side, 0.0))
    else:
        item = _ground_shape(rng, _pick(rng, _GROUND_LABELS, _GROUND_WEIGHTS))
        count = int(min(n, rng.integers(3, 6)))
        step = item.extents[0] + rng.uniform(0.05, 0.4)
        yaw = _yaw(rng, True)
        for k in range(count):
            lay.place_ground(item, (k - (count - 1) / 2) * step + rng.normal(0, 0.02), rng.normal(0, 0.03), yaw,
                             push=(1.0, 0.0))


def _style_desk(lay: _Layout) -> None:
    rng = lay.rng
    desk = make_shape("table", rng)
    t = lay.place_ground(desk, 0.0, 0.0, rng.normal(0, 0.05))
    lay.place_on(make_shape("monitor-on-stand", rng), t, where=(rng.uniform(-0.5, 0.5), 0.8), yaw=rng.normal(0, 0.1))
    if rng.random() < 0.7:
        lay.place_on(make_shape("lamp", rng, float(rng.uniform(0.3, 0.5))), t, where=(rng.choice((-0.9, 0.9)), 0.6))
    chair = make_shape("chair", rng)
    y = -desk.extents[1] / 2 - chair.extents[1] / 2 - rng.uniform(0.05, 0.3)
    lay.place_ground(chair, rng.normal(0, 0.1), y, np.pi + rng.normal(0, 0.2), push=(0.0, -1.0))


def _style_dining(lay: _Layout) -> None:
    rng = lay.rng
    tab = make_shape("table", rng)
    lay.place_ground(tab, 0.0, 0.0, rng.normal(0, 0.02))
    chair = make_shape("chair", rng)
    per_side = 1 if tab.extents[0] < 1.1 else 2
    for side in (-1, 1):  # chairs facing the table from front and back
        for k in range(per_side):
            x = 0.0 if per_side == 1 else (k - 0.5) * tab.extents[0] * 0.5
            y = side * (tab.extents[1] / 2 + chair.extents[1] / 2 + 0.05)
            lay.place_ground(chair, x, y, (0.0 if side > 0 else np.pi) + rng.normal(0, 0.05), push=(0.0, side))


def _look_at(position: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Blender camera matrix_world looking from position at target, no roll (+Z up)."""
    fwd = target - position
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, (0.0, 0.0, 1.0))
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, -fwd, position
    return m


def _image_box(camera: Camera, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uv, _ = camera.project(points)
    return uv.min(axis=0), uv.max(axis=0)


def _core_or_full(rng: np.random.Generator, core: tuple[float, float], full: tuple[float, float],
                  hard: bool = False) -> float:
    """Mostly the common range, sometimes anywhere in the protocol's range (always, for hard scenes)."""
    draw = rng.random()
    return float(rng.uniform(*(core if draw < 0.8 and not hard else full)))


def _fit_camera(
    points: np.ndarray, azim: float, rng: np.random.Generator, resolution: int, hard: bool = False
) -> tuple[Camera, float, float]:
    """Camera at azimuth `azim` (radians, from the scene towards the camera) with random fov and elevation,
    pulled back until the scene fills the sampled share of the frame."""
    fov = _core_or_full(rng, FOV_CORE, FOV_DEG, hard)
    elev = _core_or_full(rng, ELEVATION_CORE, ELEVATION_DEG, hard)
    fill = _core_or_full(rng, FILL_CORE, FILL, hard)
    jitter = rng.uniform(-1.0, 1.0, size=2) * (1.0 - fill) * resolution * 0.25  # scene not always dead centre
    lo, hi = points.min(axis=0), points.max(axis=0)
    target = (lo + hi) / 2
    direction = np.array([np.cos(np.radians(elev)) * np.cos(azim), np.cos(np.radians(elev)) * np.sin(azim),
                          np.sin(np.radians(elev))])
    size = float(resolution)
    cam = Camera(np.eye(4), fov, (resolution, resolution))
    for _ in range(4):  # distance for the fill, then re-centre the image box; repeat
        near, far = 0.2, 200.0
        for _ in range(40):
            dist = math.sqrt(near * far)
            cam.matrix_world = _look_at(target + direction * dist, target)
            a, b = _image_box(cam, points)
            _, depth = cam.project(points)
            if depth.min() <= 0.05 or (b - a).max() / size > fill:
                near = dist
            else:
                far = dist
        cam.matrix_world = _look_at(target + direction * far, target)
        a, b = _image_box(cam, points)
        shift_px = (a + b) / 2 - size / 2 - jitter
        depth = far
        # move the aim point in the camera plane so the image box is centred
        m = cam.matrix_world
        target = target + m[:3, 0] * shift_px[0] * depth / cam.focal_px - m[:3, 1] * shift_px[1] * depth / cam.focal_px
    a, b = _image_box(cam, points)
    return cam, elev, float((b - a).max() / size)


def _lighting(rng: np.random.Generator) -> Lighting:
    el = np.radians(rng.uniform(35.0, 70.0))
    az = rng.uniform(-np.pi, np.pi)
    sky_v = rng.uniform(0.5, 0.75)
    tint = rng.uniform(0.0, 0.06)
    sky = tuple(float(c) for c in (sky_v - tint, sky_v - tint / 2, sky_v))
    g = float(rng.uniform(0.45, 0.6))
    return Lighting(
        sun_direction=(float(np.cos(el) * np.cos(az)), float(np.cos(el) * np.sin(az)), float(np.sin(el))),
        sun_strength=float(rng.uniform(1.3, 2.5)),
        sun_angle_deg=float(rng.uniform(3.0, 12.0)),
        sky_color=sky,
        sky_strength=float(rng.uniform(0.7, 1.1)),
        ground_color=(g, g, g * rng.uniform(0.98, 1.03)),
    )


# The protocol's harder arrangements: packed clusters, props stacked on props, rows that hide each other.
HARD_STYLES, _HARD_WEIGHTS = ("cluster", "support", "front_behind"), (0.4, 0.35, 0.25)


def sample_scene(seed: int, resolution: int = 512, hard: bool = False, props: PropRules = DEFAULT_PROPS
                 ) -> SceneDescription:
    """A random blockout scene, the same for the same seed and rules. `hard`: only the harder arrangements
    (clusters, supports with props stacked on props, occluding rows) and cameras drawn from the protocol's full
    ranges. `props`: what props rest on and their sizes."""
    rng = np.random.default_rng(seed)
    style = _pick(rng, HARD_STYLES, _HARD_WEIGHTS) if hard else _pick(rng, STYLES, _STYLE_WEIGHTS)
    lay = _Layout(rng, props)
    n_ground = int(rng.choice((1, 1, 2, 2, 2, 2, 3, 3, 4, 5, 6)))
    tags = {style}
    if style in ("front_behind", "side_by_side"):
        _style_row(lay, max(n_ground, 2), depth=style == "front_behind")
    elif style == "scatter":
        _style_scatter(lay, max(n_ground, 2))
    elif style == "cluster":
        _style_scatter(lay, min(max(n_ground + 2, 4), 7), radius=0.5)
        tags.add("front_behind")
    elif style == "symmetric":
        _style_symmetric(lay, max(n_ground, 3))
        tags.add("side_by_side")
    elif style == "desk":
        _style_desk(lay)
        tags |= {"support", "front_behind"}
    elif style == "dining":
        _style_dining(lay)
        tags |= {"symmetric", "front_behind"}
    else:  # support: one or two hosts, with props, and maybe neighbours
        for _ in range(int(rng.integers(1, 3))):
            host = _ground_shape(rng, str(rng.choice(props.supports)))
            lay.place_ground(host, rng.normal(0, 0.3), rng.normal(0, 0.3), _yaw(rng, True))
        _style_row(lay, int(rng.integers(0, 3)), depth=bool(rng.random() < 0.5))
    if len(lay.objects) < 2:  # every scene has at least two objects
        lay.place_ground(_ground_shape(rng), rng.uniform(0.5, 1.0), rng.normal(0, 0.3), _yaw(rng, True))
    room = MAX_OBJECTS - len(lay.objects)
    n_props = int(rng.integers(1, 4)) if style == "support" else int(rng.choice((0, 1, 1, 2)))
    stack = rng.random() < 0.1
    _add_props(lay, min(room, n_props + (2 if hard and style == "support" else 0)), stack=bool(stack or hard))
    if any(o.support is not None for o in lay.objects):
        tags.add("support")
    if any(o.support is not None and lay.objects[o.support].support is not None for o in lay.objects):
        tags.add("stacked")

    # layout frame -> world: random yaw and offset
    yaw = float(rng.uniform(-np.pi, np.pi))
    world = _pose(rng.normal(0, 0.5), rng.normal(0, 0.5), 0.0, yaw)
    for o in lay.objects:
        o.matrix_world = world @ o.matrix_world
    points = np.concatenate([o.world_mesh().vertices for o in lay.objects])
    # the viewer stands on the layout's -Y side (rows recede, fronts face it), except for scatters and a few others
    if style == "scatter" or rng.random() < 0.15:
        azim = float(rng.uniform(-np.pi, np.pi))
    else:
        azim = yaw - np.pi / 2 + float(rng.uniform(-1.0, 1.0)) * np.radians(50.0)
    camera, elev, fill = _fit_camera(points, azim, rng, resolution, hard)
    return SceneDescription(seed, lay.objects, camera, _lighting(rng), style, sorted(tags), 0.0, elev, fill)
