"""Shape families: closed meshes of plausible real-world sizes, resting on z = 0."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from scenewright.data.shapes import COMPOSITES, FAMILIES, PRIMITIVES, inside, make_shape

# (min, max) of the longest side, and of the height, in metres
SIZES = {
    "table": ((0.7, 1.5), (0.38, 0.78)),
    "chair": ((0.74, 1.0), (0.74, 1.0)),
    "stool": ((0.45, 0.75), (0.45, 0.75)),
    "shelf": ((0.6, 1.8), (0.8, 1.8)),
    "cabinet": ((0.5, 1.4), (0.55, 1.35)),
    "sofa": ((1.3, 2.3), (0.75, 0.92)),
    "bed": ((1.9, 2.2), (0.8, 1.2)),
    "lamp": ((0.3, 1.8), (0.3, 1.8)),
    "monitor-on-stand": ((0.4, 0.7), (0.3, 0.65)),
}


@pytest.mark.parametrize("label", FAMILIES)
def test_shapes_are_closed_and_rest_on_the_ground(label: str) -> None:
    rng = np.random.default_rng(7)
    for _ in range(8):
        shape = make_shape(label, rng)
        mesh = shape.mesh
        assert shape.label == label
        assert mesh.is_watertight and mesh.is_winding_consistent
        assert mesh.volume > 0  # outward normals
        assert abs(mesh.bounds[0, 2]) < 1e-9
        assert np.abs(mesh.bounds.mean(axis=0)[:2]).max() < 0.15  # centred in x/y


@pytest.mark.parametrize("label", COMPOSITES)
def test_composites_have_real_world_sizes(label: str) -> None:
    rng = np.random.default_rng(3)
    (lo, hi), (hlo, hhi) = SIZES[label]
    for _ in range(12):
        ext = make_shape(label, rng).extents
        assert lo - 1e-6 <= ext.max() <= hi + 1e-6, ext
        assert hlo - 1e-6 <= ext[2] <= hhi + 1e-6, ext


@pytest.mark.parametrize("label", PRIMITIVES)
def test_primitive_size_is_the_longest_side(label: str) -> None:
    rng = np.random.default_rng(5)
    for size in (0.12, 0.5, 0.9):
        ext = make_shape(label, rng, size).extents
        assert ext.max() == pytest.approx(size, rel=0.03)


def test_support_top_is_the_top_of_the_shape() -> None:
    rng = np.random.default_rng(11)
    for label in ("table", "cabinet", "shelf", "stool", "box"):
        shape = make_shape(label, rng)
        assert shape.top is not None
        assert shape.top.z == pytest.approx(shape.mesh.bounds[1, 2], abs=1e-9)
        assert shape.top.half_x <= shape.extents[0] / 2 and shape.top.half_y <= shape.extents[1] / 2


def test_inside_matches_analytic_solids() -> None:
    rng = np.random.default_rng(0)
    points = rng.uniform(-1.2, 1.2, size=(2000, 3))
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    r = np.linalg.norm(points, axis=1)
    away = np.abs(r - 1.0) > 0.02  # the mesh is a polyhedron: ignore the thin shell between it and the sphere
    assert (inside(sphere, points)[away] == (r < 1.0)[away]).all()
    box = trimesh.creation.box(extents=(1.0, 2.0, 0.5))
    expected = (np.abs(points) < (0.5, 1.0, 0.25)).all(axis=1)
    assert (inside(box, points) == expected).all()


def test_lamp_size_is_its_height() -> None:
    rng = np.random.default_rng(2)
    for height in (0.35, 1.6):
        assert make_shape("lamp", rng, height).extents[2] == pytest.approx(height, abs=1e-9)
