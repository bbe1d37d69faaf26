"""Scene sampler: deterministic, physically plausible (support, no interpenetration), camera in range."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from scenewright.camera import render_silhouettes
from scenewright.data.scenes import ELEVATION_DEG, FILL, FOV_DEG, MAX_OBJECTS, PROP_RULES, VARIED_PROPS, sample_scene
from scenewright.data.shapes import PRIMITIVES, inside

SEEDS = range(24)


@pytest.fixture(scope="module", params=sorted(PROP_RULES))
def scenes(request):
    return [sample_scene(seed, resolution=128, props=PROP_RULES[request.param]) for seed in SEEDS]


def test_same_seed_same_scene() -> None:
    a, b = sample_scene(1234), sample_scene(1234)
    assert a.labels == b.labels and a.style == b.style
    assert np.array_equal(a.camera.matrix_world, b.camera.matrix_world)
    for oa, ob in zip(a.objects, b.objects):
        assert np.array_equal(oa.matrix_world, ob.matrix_world)
        assert np.array_equal(oa.mesh.vertices, ob.mesh.vertices)
        assert oa.color == ob.color and oa.support == ob.support
    c = sample_scene(1235)
    assert not np.array_equal(a.camera.matrix_world, c.camera.matrix_world)


def test_object_counts_and_variety(scenes) -> None:
    counts = [len(s.objects) for s in scenes]
    assert min(counts) >= 2 and max(counts) <= MAX_OBJECTS
    assert len({s.style for s in scenes}) >= 4
    assert any(o.support is not None for s in scenes for o in s.objects)


def test_objects_rest_on_ground_or_support(scenes) -> None:
    for scene in scenes:
        for obj in scene.objects:
            mesh = obj.world_mesh()
            if obj.support is None:
                assert abs(mesh.bounds[0, 2] - scene.ground_z) < 1e-3
                continue
            base = scene.objects[obj.support]
            top = base.top
            # on the support's top surface (a bed's mattress lies below its headboard), over its top rectangle
            local = (np.c_[mesh.vertices, np.ones(len(mesh.vertices))] @ np.linalg.inv(base.matrix_world).T)[:, :3]
            assert abs(local[:, 2].min() - top.z) < 1e-3, (scene.seed, obj.label, base.label)
            assert top.z <= base.mesh.bounds[1, 2] + 1e-9
            assert (np.abs(local[:, 0] - top.center_x) <= top.half_x + 1e-6).all()
            assert (np.abs(local[:, 1] - top.center_y) <= top.half_y + 1e-6).all()


def test_no_interpenetration(scenes) -> None:
    rng = np.random.default_rng(0)
    for scene in scenes[:12]:
        meshes = [o.world_mesh() for o in scene.objects]
        for i, a in enumerate(meshes):
            for j, b in enumerate(meshes):
                if i == j:
                    continue
                lo = np.maximum(a.bounds[0], b.bounds[0])
                hi = np.minimum(a.bounds[1], b.bounds[1])
                if (hi - lo <= 1e-4).any():
                    continue  # boxes apart (or touching): nothing to test
                points = rng.uniform(lo, hi, size=(600, 3))
                both = inside(a, points) & inside(b, points)
                assert not both.any(), (scene.seed, scene.objects[i].label, scene.objects[j].label)


def test_camera_ranges_and_framing(scenes) -> None:
    for scene in scenes:
        cam = scene.camera
        assert FOV_DEG[0] <= cam.fov_deg <= FOV_DEG[1]
        forward = -cam.matrix_world[:3, 2]
        elevation = math.degrees(math.asin(-forward[2]))
        assert ELEVATION_DEG[0] - 1e-6 <= elevation <= ELEVATION_DEG[1] + 1e-6
        assert abs(cam.matrix_world[2, 0]) < 1e-9  # no roll: image x stays horizontal
        meshes = [o.world_mesh() for o in scene.objects]
        points = np.concatenate([m.vertices for m in meshes])
        uv, depth = cam.project(points)
        assert depth.min() > 0
        assert (uv >= 0).all() and (uv <= 128).all()  # whole scene in the frame
        fill = (uv.max(axis=0) - uv.min(axis=0)).max() / 128
        assert FILL[0] - 0.02 <= fill <= FILL[1] + 0.01
        union = render_silhouettes([(m.vertices, m.faces) for m in meshes], cam).any(axis=0)
        assert union.mean() > 0.02  # objects really cover the picture (dev cases: 4 % and up)


def test_hard_scenes_are_the_harder_arrangements_with_full_camera_ranges():
    from scenewright.data.scenes import ELEVATION_CORE, HARD_STYLES

    hard = [sample_scene(seed, resolution=64, hard=True) for seed in range(12)]
    assert {s.style for s in hard} <= set(HARD_STYLES) and len({s.style for s in hard}) > 1
    assert any(not ELEVATION_CORE[0] <= s.elevation_deg <= ELEVATION_CORE[1] for s in hard)  # full camera ranges
    plain = sample_scene(3, resolution=64)
    again = sample_scene(3, resolution=64, hard=False)
    assert plain.style == again.style and np.array_equal(plain.camera.matrix_world, again.camera.matrix_world)


def test_varied_props_rest_on_beds_and_small_hosts_too_and_are_smaller():
    def hosts(scenes):
        return Counter(s.objects[o.support].label for s in scenes for o in s.objects if o.support is not None)

    def largest_primitive_prop(scenes):
        props = [o for s in scenes for o in s.objects if o.support is not None and o.label in PRIMITIVES]
        return max(max(o.mesh.extents) for o in props)

    plain = [sample_scene(seed, resolution=64) for seed in SEEDS]
    varied = [sample_scene(seed, resolution=64, props=VARIED_PROPS) for seed in SEEDS]
    assert hosts(plain)["bed"] == 0 and hosts(varied)["bed"] > 0
    assert largest_primitive_prop(varied) <= VARIED_PROPS.prop_size[1] + 1e-9 < largest_primitive_prop(plain)
