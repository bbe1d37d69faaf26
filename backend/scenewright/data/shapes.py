"""Blockout object families as watertight triangle meshes, in metres (no bpy).

Every shape is built in its own frame: resting on z = 0, centred on the
origin in x/y, its "front" facing -Y (a chair's back, a sofa's back and a
bed's headboard are at +Y; a monitor's screen faces -Y). Composites are
unions of closed primitives kept as ONE mesh per instance, so each is
watertight (every edge has exactly two faces) like the benchmark's GT meshes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import trimesh
from trimesh import creation

PRIMITIVES = ("box", "cylinder", "sphere", "cone", "capsule", "torus", "wedge")
COMPOSITES = ("table", "chair", "stool", "shelf", "cabinet", "sofa", "bed", "lamp", "monitor-on-stand")
FAMILIES = PRIMITIVES + COMPOSITES

_SECTIONS = 24


@dataclass
class SupportTop:
    """A horizontal surface other objects may rest on: height and the usable rectangle (shape frame)."""

    z: float
    half_x: float
    half_y: float
    center_x: float = 0.0
    center_y: float = 0.0


@dataclass
class Shape:
    label: str
    mesh: trimesh.Trimesh
    top: SupportTop | None = None

    @property
    def extents(self) -> np.ndarray:
        return np.asarray(self.mesh.extents, dtype=np.float64)


def _at(mesh: trimesh.Trimesh, x: float = 0.0, y: float = 0.0, z: float = 0.0) -> trimesh.Trimesh:
    mesh.apply_translation((x, y, z))
    return mesh


def _box(sx: float, sy: float, sz: float, x: float = 0.0, y: float = 0.0, z0: float = 0.0) -> trimesh.Trimesh:
    """Axis-aligned box of size (sx, sy, sz) whose bottom face is at z0."""
    return _at(creation.box(extents=(sx, sy, sz)), x, y, z0 + sz / 2.0)


def _cylinder(
    r: float, h: float, x: float = 0.0, y: float = 0.0, z0: float = 0.0, sections: int = _SECTIONS
) -> trimesh.Trimesh:
    return _at(creation.cylinder(radius=r, height=h, sections=sections), x, y, z0 + h / 2.0)


def _frustum(r_bottom: float, r_top: float, h: float, z0: float = 0.0, sections: int = _SECTIONS) -> trimesh.Trimesh:
    """Truncated cone (lamp shades, stool seats): a cylinder whose top ring is rescaled."""
    mesh = creation.cylinder(radius=1.0, height=h, sections=sections)
    v = mesh.vertices.copy()
    top = v[:, 2] > 0
    v[top, :2] *= r_top
    v[~top, :2] *= r_bottom
    v[:, 2] += z0 + h / 2.0
    return trimesh.Trimesh(v, mesh.faces, process=False)


def _union(parts: list[trimesh.Trimesh]) -> trimesh.Trimesh:
    """One mesh from closed parts (no boolean: overlapping closed parts stay watertight)."""
    mesh = trimesh.util.concatenate(parts)
    return trimesh.Trimesh(mesh.vertices.astype(np.float64), mesh.faces.astype(np.int64), process=False)


def _legs(
    sx: float, sy: float, inset: float, h: float, thick: float, rng: np.random.Generator, round_legs: bool | None = None
) -> list[trimesh.Trimesh]:
    """Four legs at the corners of an sx x sy rectangle, square or round."""
    round_legs = bool(rng.random() < 0.5) if round_legs is None else round_legs
    out = []
    for sxn in (-1, 1):
        for syn in (-1, 1):
            x = sxn * (sx / 2 - inset - thick / 2)
            y = syn * (sy / 2 - inset - thick / 2)
            out.append(_cylinder(thick / 2, h, x, y, sections=12) if round_legs else _box(thick, thick, h, x, y))
    return out


# ---------------------------------------------------------------- primitives
# Primitives take `size`: the length of their longest side in metres.


def box(rng: np.random.Generator, size: float) -> Shape:
    dims = size * np.array([1.0, rng.uniform(0.45, 1.0), rng.uniform(0.3, 1.0)])
    rng.shuffle(dims[:2])
    mesh = _box(*dims)
    return Shape("box", mesh, SupportTop(float(dims[2]), dims[0] / 2, dims[1] / 2))


def cylinder(rng: np.random.Generator, size: float) -> Shape:
    if rng.random() < 0.6:  # upright, taller than wide
        h, r = size, size * rng.uniform(0.2, 0.5)
    else:  # squat drum
        r, h = size / 2, size * rng.uniform(0.3, 0.9)
    return Shape("cylinder", _cylinder(r, h), SupportTop(float(h), r * 0.6, r * 0.6))


def sphere(rng: np.random.Generator, size: float) -> Shape:
    return Shape("sphere", _at(creation.icosphere(subdivisions=3, radius=size / 2), z=size / 2))


def cone(rng: np.random.Generator, size: float) -> Shape:
    ratio = rng.uniform(0.6, 1.0)
    if rng.random() < 0.5:
        h, r = size, size * ratio / 2
    else:
        r, h = size / 2, size * ratio
    return Shape("cone", creation.cone(radius=r, height=h, sections=_SECTIONS))


def capsule(rng: np.random.Generator, size: float) -> Shape:
    r = size * rng.uniform(0.15, 0.35)
    mesh = creation.capsule(height=size - 2 * r, radius=r, count=[24, 12])
    if rng.random() < 0.2:  # lying on its side
        mesh.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, (1, 0, 0)))
    return Shape("capsule", _at(mesh, z=-mesh.bounds[0, 2]))


def torus(rng: np.random.Generator, size: float) -> Shape:
    major = size / 2 * rng.uniform(0.7, 0.85)
    minor = size / 2 - major
    return Shape("torus", _at(creation.torus(major, minor, major_sections=24, minor_sections=12), z=minor))


def wedge(rng: np.random.Generator, size: float) -> Shape:
    """Triangular prism: a ramp rising towards +Y, extruded along x."""
    sx = size * rng.uniform(0.4, 1.0)
    sy = size
    sz = size * rng.uniform(0.25, 0.8)
    if rng.random() < 0.5:
        sx, sy = sy, sx
    x0, x1, y0, y1 = -sx / 2, sx / 2, -sy / 2, sy / 2
    v = np.array([[x0, y0, 0], [x0, y1, 0], [x0, y1, sz], [x1, y0, 0], [x1, y1, 0], [x1, y1, sz]], dtype=np.float64)
    f = np.array([[0, 2, 1], [3, 4, 5], [0, 1, 4], [0, 4, 3], [1, 2, 5], [1, 5, 4], [0, 3, 5], [0, 5, 2]])
    mesh = trimesh.Trimesh(v, f, process=False)
    mesh.fix_normals()
    return Shape("wedge", mesh)


# ---------------------------------------------------------------- composites


def table(rng: np.random.Generator) -> Shape:
    sx = rng.uniform(0.7, 1.5)
    sy = rng.uniform(0.5, min(sx, 1.1))
    h = rng.uniform(0.68, 0.78) if rng.random() < 0.7 else rng.uniform(0.38, 0.5)
    t = rng.uniform(0.03, 0.06)
    leg = rng.uniform(0.04, 0.07)
    if rng.random() < 0.3:  # round top on a pedestal with a disc or cross foot
        r = min(sx, 1.2) / 2
        parts = [_cylinder(r, t, z0=h - t), _cylinder(leg * 0.8, h - t, sections=16)]
        foot = rng.uniform(0.3, 0.45) * 2 * r
        if rng.random() < 0.5:
            parts.append(_cylinder(foot / 2, 0.03))
        else:
            parts += [_box(foot, 0.05, 0.04), _box(0.05, foot, 0.04)]
        return Shape("table", _union(parts), SupportTop(h, r * 0.65, r * 0.65))
    inset = rng.uniform(0.0, 0.08)
    parts = [_box(sx, sy, t, z0=h - t)] + _legs(sx, sy, inset, h - t, leg, rng)
    return Shape("table", _union(parts), SupportTop(h, sx / 2 - 0.03, sy / 2 - 0.03))


def chair(rng: np.random.Generator) -> Shape:
    w = rng.uniform(0.4, 0.55)
    d = rng.uniform(0.4, 0.52)
    seat_h = rng.uniform(0.42, 0.48)
    t = rng.uniform(0.03, 0.06)
    leg = rng.uniform(0.03, 0.05)
    back_h = rng.uniform(0.35, 0.5)
    back_t = rng.uniform(0.025, 0.05)
    parts = [_box(w, d, t, z0=seat_h - t)] + _legs(w, d, 0.0, seat_h - t, leg, rng)
    back_y = d / 2 - back_t / 2
    if rng.random() < 0.45:  # solid back panel
        parts.append(_box(w, back_t, back_h, y=back_y, z0=seat_h))
    else:  # two posts with a top rail, or with horizontal slats
        for sxn in (-1, 1):
            parts.append(_box(leg, back_t, back_h, x=sxn * (w / 2 - leg / 2), y=back_y, z0=seat_h))
        if rng.random() < 0.5:
            rail = back_h * rng.uniform(0.25, 0.45)
            parts.append(_box(w, back_t, rail, y=back_y, z0=seat_h + back_h - rail))
        else:
            n = int(rng.integers(2, 5))
            slat = back_h / (2 * n)
            for k in range(n):
                parts.append(_box(w, back_t * 0.8, slat, y=back_y, z0=seat_h + back_h - slat - 2 * k * slat))
    return Shape("chair", _union(parts))


def stool(rng: np.random.Generator) -> Shape:
    h = rng.uniform(0.45, 0.75)
    r = rng.uniform(0.14, 0.22)
    t = rng.uniform(0.03, 0.06)
    if rng.random() < 0.3:  # square seat, four legs joined by rungs
        side = r * 1.8
        leg = rng.uniform(0.025, 0.04)
        parts = [_box(side, side, t, z0=h - t)] + _legs(side, side, 0.0, h - t, leg, rng, round_legs=False)
        rung_z = (h - t) * rng.uniform(0.25, 0.4)
        for sxn in (-1, 1):
            parts.append(_box(side - leg, leg * 0.6, leg * 0.6, y=sxn * (side / 2 - leg / 2), z0=rung_z))
            parts.append(_box(leg * 0.6, side - leg, leg * 0.6, x=sxn * (side / 2 - leg / 2), z0=rung_z + leg))
        return Shape("stool", _union(parts), SupportTop(h, side / 2 - 0.02, side / 2 - 0.02))
    parts = [_cylinder(r, t, z0=h - t)]
    if rng.random() < 0.3:  # pedestal stool
        parts += [_cylinder(r * 0.15, h - t), _cylinder(r * 0.8, 0.03)]
    else:
        n = int(rng.integers(3, 5))
        leg_r = rng.uniform(0.012, 0.022)
        for k in range(n):
            a = 2 * np.pi * k / n + np.pi / 4
            parts.append(_cylinder(leg_r, h - t, (r - 2 * leg_r) * np.cos(a), (r - 2 * leg_r) * np.sin(a), sections=12))
        ring_z = (h - t) * rng.uniform(0.25, 0.4)
        parts.append(_at(creation.torus(r - 2 * leg_r, leg_r * 0.8, major_sections=24, minor_sections=8), z=ring_z))
    return Shape("stool", _union(parts), SupportTop(h, r * 0.6, r * 0.6))


def shelf(rng: np.random.Generator) -> Shape:
    w = rng.uniform(0.6, 1.2)
    d = rng.uniform(0.28, 0.45)
    h = rng.uniform(0.8, 1.8)
    t = rng.uniform(0.02, 0.04)
    n_boards = int(rng.integers(3, 6))
    parts = [_box(t, d, h, x=sx * (w / 2 - t / 2)) for sx in (-1, 1)]
    if rng.random() < 0.6:
        parts.append(_box(w, t, h, y=d / 2 - t / 2))  # back panel
    for k in range(n_boards):
        z = k * (h - t) / (n_boards - 1)
        parts.append(_box(w, d, t, z0=z))
    return Shape("shelf", _union(parts), SupportTop(h, w / 2 - 0.03, d / 2 - 0.03))


def cabinet(rng: np.random.Generator) -> Shape:
    w = rng.uniform(0.5, 1.4)
    d = rng.uniform(0.4, 0.65)
    body_h = rng.uniform(0.55, 1.2)
    legs = rng.uniform(0.05, 0.15) if rng.random() < 0.6 else 0.0
    parts = [_box(w, d, body_h, z0=legs)]
    if legs:
        parts += _legs(w, d, 0.03, legs + 0.01, 0.035, rng, round_legs=True)
    front = -d / 2 - 0.0075  # fronts stand 1.5 cm proud of the body, handles 2 cm more
    cols = 1 if w < 0.7 else 2
    cw = w / cols
    if rng.random() < 0.4:  # drawers
        rows = int(rng.integers(2, 5))
        rh = body_h / rows
        for i in range(cols):
            for j in range(rows):
                cx, z = -w / 2 + cw * (i + 0.5), legs + rh * j
                parts.append(_box(cw - 0.02, 0.015, rh - 0.02, x=cx, y=front, z0=z + 0.01))
                parts.append(_box(min(0.12, cw * 0.3), 0.02, 0.02, x=cx, y=front - 0.0175, z0=z + rh * 0.6))
    else:  # doors with vertical handles near the middle (or the free edge of a single door)
        handle_h = min(0.2, body_h * 0.3)
        for i in range(cols):
            cx = -w / 2 + cw * (i + 0.5)
            parts.append(_box(cw - 0.02, 0.015, body_h - 0.02, x=cx, y=front, z0=legs + 0.01))
            hx = cx + (cw / 2 - 0.06) * (1 if i == 0 else -1)
            parts.append(_box(0.02, 0.02, handle_h, x=hx, y=front - 0.0175, z0=legs + body_h * 0.5))
    top = legs + body_h
    return Shape("cabinet", _union(parts), SupportTop(top, w / 2 - 0.03, d / 2 - 0.03))


def sofa(rng: np.random.Generator) -> Shape:
    w = rng.uniform(1.3, 2.3)
    d = rng.uniform(0.8, 1.0)
    h = rng.uniform(0.75, 0.92)
    feet = rng.uniform(0.04, 0.1)
    base_h = rng.uniform(0.22, 0.3)
    arm_w = rng.uniform(0.12, 0.22)
    arm_h = rng.uniform(0.55, 0.68)
    back_t = rng.uniform(0.15, 0.25)
    cushion_h = rng.uniform(0.12, 0.18)
    parts = _legs(w, d, 0.04, feet + 0.01, 0.05, rng, round_legs=True)
    parts.append(_box(w, d, base_h, z0=feet))
    parts.append(_box(w, back_t, h - feet, y=d / 2 - back_t / 2, z0=feet))
    for sx in (-1, 1):
        parts.append(_box(arm_w, d, arm_h - feet, x=sx * (w / 2 - arm_w / 2), z0=feet))
    n_cushions = 2 if w < 1.7 else 3
    inner = w - 2 * arm_w
    cw = inner / n_cushions
    for k in range(n_cushions):
        x = -inner / 2 + cw * (k + 0.5)
        parts.append(_box(cw - 0.02, d - back_t - 0.02, cushion_h, x=x, y=-back_t / 2, z0=feet + base_h))
    return Shape("sofa", _union(parts))


def bed(rng: np.random.Generator) -> Shape:
    w = rng.uniform(0.9, 1.8)
    length = rng.uniform(1.9, 2.2)
    frame_h = rng.uniform(0.25, 0.4)
    feet = rng.uniform(0.05, 0.15)
    mattress_h = rng.uniform(0.15, 0.25)
    head_h = rng.uniform(0.8, 1.2)
    head_t = rng.uniform(0.05, 0.1)
    parts = _legs(w, length, 0.02, feet + 0.01, 0.06, rng)
    parts.append(_box(w, length, frame_h, z0=feet))
    parts.append(_box(w - 0.04, length - head_t - 0.04, mattress_h, y=-head_t / 2, z0=feet + frame_h))
    parts.append(_box(w, head_t, head_h, y=length / 2 - head_t / 2))
    if rng.random() < 0.4:  # footboard
        parts.append(_box(w, head_t, feet + frame_h + rng.uniform(0.1, 0.3), y=-length / 2 + head_t / 2))
    n_pillows = 1 if w < 1.3 else 2
    pw = (w - 0.1) / n_pillows
    for k in range(n_pillows):
        x = -(w - 0.1) / 2 + pw * (k + 0.5)
        parts.append(_box(pw - 0.06, 0.35, 0.1, x=x, y=length / 2 - head_t - 0.25, z0=feet + frame_h + mattress_h))
    # the mattress between the footboard's place and the pillows (the default scenes put nothing on it: PropRules)
    y_lo, y_hi = -length / 2 + head_t + 0.03, length / 2 - head_t - 0.45
    top = SupportTop(feet + frame_h + mattress_h, (w - 0.04) / 2 - 0.03, (y_hi - y_lo) / 2, center_y=(y_lo + y_hi) / 2)
    return Shape("bed", _union(parts), top)


def lamp(rng: np.random.Generator, height: float | None = None) -> Shape:
    """Floor lamp (1.3-1.8 m) or table lamp (0.3-0.55 m): base, pole, shade."""
    if height is None:
        height = rng.uniform(1.3, 1.8) if rng.random() < 0.55 else rng.uniform(0.3, 0.55)
    h = float(height)
    shade_h = h * rng.uniform(0.15, 0.3) if h > 1 else h * rng.uniform(0.35, 0.5)
    shade_r = rng.uniform(0.13, 0.22) if h > 1 else rng.uniform(0.08, 0.14)
    base_r = shade_r * rng.uniform(0.6, 1.0)
    base_t = rng.uniform(0.02, 0.04)
    pole_r = rng.uniform(0.01, 0.02)
    parts = [_cylinder(base_r, base_t)]
    if rng.random() < 0.25:  # globe lamp
        ball = min(shade_r, shade_h)
        parts += [
            _cylinder(pole_r, h - ball, z0=base_t * 0.5, sections=12),
            _at(creation.icosphere(subdivisions=2, radius=ball), z=h - ball),
        ]
    else:
        parts += [
            _cylinder(pole_r, h - shade_h * 0.5, z0=base_t * 0.5, sections=12),
            _frustum(shade_r, shade_r * rng.uniform(0.55, 0.8), shade_h, z0=h - shade_h),
        ]
    return Shape("lamp", _union(parts))


def monitor_on_stand(rng: np.random.Generator) -> Shape:
    sw = rng.uniform(0.4, 0.7)
    sh = sw * rng.uniform(0.55, 0.65)
    st = rng.uniform(0.02, 0.045)
    neck_h = rng.uniform(0.08, 0.16)
    base_w, base_d, base_t = rng.uniform(0.18, 0.28), rng.uniform(0.14, 0.22), rng.uniform(0.012, 0.025)
    neck_y = base_d * 0.15
    parts = [
        _box(base_w, base_d, base_t),
        _box(0.05, 0.03, neck_h + sh * 0.5, y=neck_y, z0=base_t * 0.5),
        _box(sw, st, sh, y=neck_y - 0.015 - st / 2, z0=base_t + neck_h),
    ]
    return Shape("monitor-on-stand", _union(parts))


_COMPOSITE_BUILDERS: dict[str, Callable[[np.random.Generator], Shape]] = {
    "table": table,
    "chair": chair,
    "stool": stool,
    "shelf": shelf,
    "cabinet": cabinet,
    "sofa": sofa,
    "bed": bed,
    "lamp": lamp,
    "monitor-on-stand": monitor_on_stand,
}
_PRIMITIVE_BUILDERS: dict[str, Callable[[np.random.Generator, float], Shape]] = {
    "box": box,
    "cylinder": cylinder,
    "sphere": sphere,
    "cone": cone,
    "capsule": capsule,
    "torus": torus,
    "wedge": wedge,
}

# Longest side of a primitive standing on the ground, and of one resting on another object.
GROUND_SIZE = (0.25, 1.0)
PROP_SIZE = (0.1, 0.4)


def make_shape(label: str, rng: np.random.Generator, size: float | None = None) -> Shape:
    """A random member of a family; `size` is the longest side of a primitive or the height of a lamp (metres)."""
    if label == "lamp":
        return lamp(rng, size)
    if label in _COMPOSITE_BUILDERS:
        return _COMPOSITE_BUILDERS[label](rng)
    if label not in _PRIMITIVE_BUILDERS:
        raise ValueError(f"unknown shape family {label!r}; known: {', '.join(FAMILIES)}")
    if size is None:
        size = float(rng.uniform(*GROUND_SIZE))
    return _PRIMITIVE_BUILDERS[label](rng, size)


def inside(mesh: trimesh.Trimesh, points: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Which points lie inside a closed mesh, by the generalised winding number (no rtree/embree needed).

    Robust for the unions of overlapping closed parts built here, where the
    winding number is >= 1 inside any part.
    """
    tri = np.asarray(mesh.triangles, dtype=np.float64)  # (F, 3, 3)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    out = np.empty(len(pts), dtype=bool)
    for start in range(0, len(pts), chunk):
        p = pts[start : start + chunk]
        a, b, c = (tri[None, :, k, :] - p[:, None, :] for k in range(3))  # (P, F, 3)
        la, lb, lc = (np.linalg.norm(v, axis=-1) for v in (a, b, c))
        det = np.einsum("pfi,pfi->pf", a, np.cross(b, c))
        div = la * lb * lc + np.einsum("pfi,pfi->pf", a, b) * lc + np.einsum("pfi,pfi->pf", b, c) * la
        div += np.einsum("pfi,pfi->pf", c, a) * lb
        winding = np.arctan2(det, div).sum(axis=1) / (2.0 * np.pi)
        out[start : start + chunk] = winding > 0.5
    return out
