"""Silhouette rasteriser, camera solve and scene placement, on synthetic scenes and one benchmark case."""

from __future__ import annotations

import math

import numpy as np
import pytest
import trimesh
from scipy.spatial import ConvexHull

from scenewright.camera import Camera, render_silhouettes, silhouette_spans, view_frame_transform
from scenewright.masks import other_masks
from scenewright.placement import (
    MIDI_TO_VIEW,
    _SpanScorer,
    CameraSolveConfig,
    camera_from_params,
    fit_depths,
    place_scene,
    recede_supported,
    refine_poses,
    refine_supported,
    silhouette_fits,
    solve_camera,
)

SIZE = (320, 240)


def _box(extents, bottom_centre):
    mesh = trimesh.creation.box(extents=extents)
    vertices = np.asarray(mesh.vertices) + np.asarray(bottom_centre, float) + [0.0, 0.0, extents[2] / 2.0]
    return vertices, np.asarray(mesh.faces)


def _cylinder(radius, height, bottom_centre):
    mesh = trimesh.creation.cylinder(radius=radius, height=height, sections=32)
    return np.asarray(mesh.vertices) + np.asarray(bottom_centre, float) + [0.0, 0.0, height / 2.0], np.asarray(mesh.faces)


def _table(bottom_centre, width=1.2, depth=0.8, height=0.75):
    top = _box((width, depth, 0.05), np.add(bottom_centre, (0.0, 0.0, height - 0.05)))
    parts = [top] + [
        _box((0.06, 0.06, height - 0.05), np.add(bottom_centre, (sx * (width / 2 - 0.05), sy * (depth / 2 - 0.05), 0.0)))
        for sx in (-1, 1) for sy in (-1, 1)
    ]
    vertices, faces, count = [], [], 0
    for v, f in parts:
        vertices.append(v)
        faces.append(f + count)
        count += len(v)
    return np.concatenate(vertices), np.concatenate(faces)


def _scene():
    """Four objects on a floor in the view frame (+Y away from the camera), a box resting on the table."""
    return [
        _table((0.0, 3.0, 0.0)),
        _box((0.3, 0.3, 0.25), (0.1, 3.0, 0.75)),
        _cylinder(0.25, 0.9, (-1.3, 2.4, 0.0)),
        _box((0.6, 0.5, 0.5), (1.4, 3.6, 0.0)),
    ]


def _seg(meshes, camera):
    """Label map (0 = background, k = instance k): painted far to near, so nearer objects occlude."""
    silhouettes = render_silhouettes(meshes, camera)
    eye = camera.matrix_world[:3, 3]
    order = sorted(range(len(meshes)), key=lambda k: -np.linalg.norm(meshes[k][0].mean(axis=0) - eye))
    seg = np.zeros(silhouettes.shape[1:], np.uint8)
    for k in order:
        seg[silhouettes[k]] = k + 1
    return seg


def _true_camera():
    return camera_from_params(30.0, 50.0, (0.2, -1.2, 2.6), SIZE)


def _pitch_deg(camera: Camera) -> float:
    forward = -camera.matrix_world[:3, 2]
    return math.degrees(math.asin(-forward[2]))


def _reproj_iou(meshes, seg, camera):
    silhouettes = render_silhouettes(meshes, camera)
    ious = [np.sum(s & (seg == k + 1)) / np.sum(s | (seg == k + 1)) for k, s in enumerate(silhouettes)]
    return float(np.mean(ious))


def test_cube_silhouette_matches_analytic_projection():
    cube = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    vertices = np.asarray(cube.vertices) + [0.3, 4.0, 0.5]
    camera = camera_from_params(20.0, 45.0, (0.0, 0.0, 1.8), (160, 120))
    silhouette = render_silhouettes([(vertices, np.asarray(cube.faces))], camera)[0]

    # The silhouette of a convex body is the convex hull of its projected corners.
    corners, _ = camera.project(vertices)
    hull = ConvexHull(corners)
    cols, rows = np.meshgrid(np.arange(160) + 0.5, np.arange(120) + 0.5)
    centres = np.stack([cols.ravel(), rows.ravel(), np.ones(cols.size)], axis=1)
    signed = centres @ hull.equations.T  # <= 0 inside every hull edge
    inside = (signed <= 1e-9).all(axis=1).reshape(120, 160)
    borderline = (np.abs(signed) < 1e-6).any(axis=1).reshape(120, 160)
    assert inside.sum() > 500
    assert np.array_equal(silhouette[~borderline], inside[~borderline])


def test_triangle_soup_silhouette_covers_exactly_the_pixel_centres_inside_its_triangles():
    # overlapping, thin and partly out-of-frame triangles, against a point-in-triangle test of every pixel centre
    rng = np.random.default_rng(3)
    camera = camera_from_params(20.0, 50.0, (0.0, -5.0, 1.5), (96, 64))
    vertices = rng.normal(size=(40, 3)) * [1.6, 1.0, 1.0] + [0.0, 0.0, 1.0]
    faces = rng.integers(0, len(vertices), size=(80, 3))
    corners = camera.project(vertices)[0][faces]
    ab, ac = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
    faces = faces[np.abs(ab[:, 0] * ac[:, 1] - ab[:, 1] * ac[:, 0]) > 1e-3]  # no degenerate triangle
    silhouette = render_silhouettes([(vertices, faces)], camera)[0]

    cols, rows = np.meshgrid(np.arange(96) + 0.5, np.arange(64) + 0.5)
    centres = np.stack([cols.ravel(), rows.ravel()], axis=1)
    inside = np.zeros(len(centres), bool)
    borderline = np.zeros(len(centres), bool)
    for tri in camera.project(vertices)[0][faces]:
        edge = np.roll(tri, -1, axis=0) - tri  # a -> b, b -> c, c -> a
        cross = edge[:, 0] * (centres[:, None, 1] - tri[:, 1]) - edge[:, 1] * (centres[:, None, 0] - tri[:, 0])
        cross /= np.linalg.norm(edge, axis=1)  # signed distance to each edge's line
        inside |= (cross >= 0).all(axis=1) | (cross <= 0).all(axis=1)
        borderline |= (np.abs(cross) < 1e-6).any(axis=1)
    assert 200 < inside.sum() < inside.size - 200 and silhouette[:, 0].any()  # reaches the frame's edge
    assert np.array_equal(silhouette.ravel()[~borderline], inside[~borderline])


def test_silhouette_ious_from_spans_match_the_drawn_silhouettes():
    # the pose fits' exact IoU |S & M| / |M | (S - O)| from spans and prefix sums, against the drawn images
    meshes = _scene()
    camera = _true_camera()
    masks = list(render_silhouettes([(v * 1.04 + [0.05, -0.1, 0.0], f) for v, f in meshes], camera))
    others = other_masks(masks, masks)
    moved = [(v + [0.08, 0.0, 0.02], f) for v, f in meshes[:3]] + [None]  # the last one has no silhouette
    ious = _SpanScorer(masks, others).ious(silhouette_spans(moved, camera))

    drawn = render_silhouettes(moved, camera)
    expected = [(s & m).sum() / max((m | (s & ~o)).sum(), 1) for s, m, o in zip(drawn, masks, others)]
    assert 0.3 < min(ious[:3]) and max(ious[:3]) < 0.99 and ious[3] == 0.0
    np.testing.assert_allclose(ious, expected, rtol=1e-12)


def test_vertex_clustering_keeps_the_silhouette_with_few_faces():
    from scenewright.silhouette_kernels import cluster_vertices

    sphere = trimesh.creation.icosphere(subdivisions=5, radius=0.6)  # 20480 faces
    vertices, faces = np.asarray(sphere.vertices) + [0.0, 3.0, 0.6], np.asarray(sphere.faces)
    light_vertices, light_faces = cluster_vertices(vertices, faces, 3000)
    assert 1000 < len(light_faces) <= 3000
    ordered = np.sort(light_faces, axis=1)
    assert (ordered[:, 0] != ordered[:, 1]).all() and (ordered[:, 1] != ordered[:, 2]).all()  # none collapsed
    assert len(np.unique(ordered, axis=0)) == len(ordered)  # none repeated
    assert (light_vertices.min(axis=0) >= vertices.min(axis=0) - 1e-9).all()  # means of merged vertices
    camera = _true_camera()
    full, light = render_silhouettes([(vertices, faces), (light_vertices, light_faces)], camera)
    assert (full & light).sum() / (full | light).sum() > 0.97
    assert cluster_vertices(vertices, faces, len(faces))[1] is faces  # already few enough: as it was


def test_silhouettes_are_per_mesh_and_empty_for_missing():
    meshes = _scene()
    camera = _true_camera()
    silhouettes = render_silhouettes([meshes[0], None, (np.zeros((0, 3)), np.zeros((0, 3), int)), meshes[1]], camera)
    assert silhouettes.shape == (4, SIZE[1], SIZE[0])
    assert silhouettes[0].any() and silhouettes[3].any()
    assert not silhouettes[1].any() and not silhouettes[2].any()
    # The box on the table is not occluded by the table in its own silhouette: table pixels overlap it.
    assert np.array_equal(silhouettes[3], render_silhouettes([meshes[1]], camera)[0])


def test_camera_round_trip_recovers_fov_pitch_and_silhouettes():
    meshes = _scene()
    truth = _true_camera()
    seg = _seg(meshes, truth)
    # Any origin and scale: the solve happens in the meshes' frame.
    moved = [(v * 0.37 + [5.0, -2.0, 1.0], f) for v, f in meshes]
    camera, diagnostics = solve_camera(moved, [seg == k + 1 for k in range(len(meshes))], SIZE)
    assert abs(camera.fov_deg - truth.fov_deg) < 3.0
    assert abs(_pitch_deg(camera) - 30.0) < 3.0
    assert _reproj_iou(moved, seg, camera) > 0.95
    assert diagnostics["used_instances"] == [0, 1, 2, 3]


@pytest.mark.parametrize("broken", ["missing", "empty", "fused"])
def test_solve_survives_missing_and_fused_instances(broken):
    meshes = _scene()
    truth = _true_camera()
    seg = _seg(meshes, truth)
    masks = [seg == k + 1 for k in range(len(meshes))]
    if broken == "missing":
        meshes[2] = None
    elif broken == "empty":
        meshes[3] = (np.zeros((0, 3)), np.zeros((0, 3), int))
    else:  # instances 3 and 4 both came out as the union of the two objects
        both = (np.concatenate([meshes[2][0], meshes[3][0]]), np.concatenate([meshes[2][1], meshes[3][1] + len(meshes[2][0])]))
        meshes[2] = meshes[3] = both
    camera, _ = solve_camera(meshes, masks, SIZE)
    assert abs(camera.fov_deg - truth.fov_deg) < 4.0
    assert abs(_pitch_deg(camera) - 30.0) < 4.0
    intact = [0, 1] if broken == "fused" else [0, 1, 3 if broken == "missing" else 2]
    assert _reproj_iou([meshes[k] for k in intact], np.select([seg == k + 1 for k in intact], [i + 1 for i in range(len(intact))]), camera) > 0.9


def test_place_scene_ground_origins_scale_and_camera():
    meshes = _scene()
    truth = _true_camera()
    seg = _seg(meshes, truth)
    scale, offset = 2.7, np.array([-3.0, 1.0, 4.0])
    moved = [(v * scale + offset, f) for v, f in meshes]
    placement = place_scene(moved, [seg == k + 1 for k in range(4)], SIZE, scene_size_m=6.0, ids=[11, 12, 13, 14])

    world = [p.vertices + p.transform[:3, 3] for p in placement.instances]
    stacked = np.concatenate(world)
    assert stacked[:, 2].min() == pytest.approx(0.0, abs=1e-6)
    assert max(np.ptp(stacked[:, 0]), np.ptp(stacked[:, 1])) == pytest.approx(6.0, rel=1e-6)
    for p in placement.instances:  # origins at bottom centres, pure translations
        lo, hi = p.vertices.min(axis=0), p.vertices.max(axis=0)
        assert lo[2] == pytest.approx(0.0, abs=1e-6)
        assert (lo[:2] + hi[:2]) / 2 == pytest.approx([0.0, 0.0], abs=1e-5)
        assert np.allclose(p.transform[:3, :3], np.eye(3))
    assert [p.support for p in placement.instances] == [None, 11, None, None]
    assert placement.diagnostics["floor_ids"] == [11, 13, 14]

    # The scene-frame camera sees the placed meshes as the input camera sees the inputs.
    scene_cam, input_cam = Camera.from_dict(placement.camera), Camera.from_dict(placement.input_camera)
    placed = [(w, p.faces) for w, p in zip(world, placement.instances)]
    differing = render_silhouettes(placed, scene_cam) != render_silhouettes(moved, input_cam)
    assert differing.mean() < 1e-4  # identical up to rounding on triangle edges
    back = world[0] @ placement.input_from_scene[:3, :3].T + placement.input_from_scene[:3, 3]
    assert np.allclose(back, moved[0][0], atol=1e-5)


@pytest.mark.parametrize("gap", [0.02, -0.01, 0.4])
def test_box_on_table_keeps_contact(gap):
    """A box floating above (or sunk into) the table top is put back onto it; from high above it falls onto it."""
    table = _table((0.0, 3.0, 0.0))
    box = _box((0.3, 0.3, 0.25), (0.1, 3.0, 0.75 + gap))
    other = _box((0.5, 0.5, 0.5), (1.5, 3.2, 0.01))  # nearly on the floor: snapped onto it
    meshes = [table, box, other]
    camera = _true_camera()
    seg = _seg(meshes, camera)
    placement = place_scene(meshes, [seg == k + 1 for k in range(3)], SIZE, scene_size_m=3.0, camera=camera)
    table_p, box_p, other_p = placement.instances
    table_top = (table_p.vertices + table_p.transform[:3, 3])[:, 2].max()
    assert box_p.support == 1
    assert box_p.transform[2, 3] == pytest.approx(table_top, abs=1e-6)
    assert other_p.support is None and other_p.transform[2, 3] == pytest.approx(0.0, abs=1e-9)
    assert placement.diagnostics["dropped_ids"] == ([2] if gap > 0.1 else [])


def test_prop_inside_a_support_with_nothing_under_it_is_lifted_onto_its_top():
    """A support whose top has no surface under the prop (an open tray: walls only, as a generated top with
    holes), the prop sunk deep into it: it comes up onto the tray's top, not along the rays to the far floor."""
    walls = [((1.0, 0.03, 0.6), (0.0, 2.515, 0.0)), ((1.0, 0.03, 0.6), (0.0, 3.485, 0.0)),
             ((0.03, 1.0, 0.6), (-0.485, 3.0, 0.0)), ((0.03, 1.0, 0.6), (0.485, 3.0, 0.0))]
    parts = [_box(extents, centre) for extents, centre in walls]
    tray = (np.concatenate([v for v, _ in parts]), np.concatenate([f + 8 * k for k, (_, f) in enumerate(parts)]))
    prop = _box((0.2, 0.2, 0.2), (0.0, 3.0, 0.3))  # half way down inside the tray, over its open middle
    meshes = [tray, prop, _cylinder(0.25, 0.9, (-1.3, 2.4, 0.0))]
    camera = _true_camera()
    seg = _seg(meshes, camera)
    placement = place_scene(meshes, [seg == k + 1 for k in range(3)], SIZE, scene_size_m=3.0, camera=camera)
    tray_p, prop_p, _ = placement.instances
    tray_top = (tray_p.vertices + tray_p.transform[:3, 3])[:, 2].max()
    assert prop_p.support == 1
    assert prop_p.transform[2, 3] == pytest.approx(tray_top, abs=1e-6)
    assert np.ptp(prop_p.vertices, axis=0) == pytest.approx(np.ptp(prop[0], axis=0) * placement.diagnostics["scale_m_per_unit"])


def test_a_prop_rests_on_the_support_the_picture_shows_below_it():
    """A box at the far end of a long low cabinet, generated too far back and too low: along its rays it would
    reach a lower box behind the cabinet with less change of distance than the cabinet's top. The picture shows
    the cabinet's top just below the prop's outline, so it rests there (dev's case_029 and two more did not)."""
    camera = _true_camera()
    cabinet = _box((0.6, 1.6, 0.6), (0.2, 3.0, 0.0))
    behind = _box((0.8, 1.0, 0.3), (0.2, 4.6, 0.0))
    prop = _box((0.25, 0.25, 0.2), (0.2, 3.65, 0.6))
    seg = _seg([cabinet, behind, prop], camera)
    eye = camera.matrix_world[:3, 3]
    generated = eye + (prop[0] - eye) * ((0.42 - eye[2]) / (0.6 - eye[2]))  # along its rays, bottom at 0.42
    meshes = [cabinet, behind, (generated, prop[1])]
    masks = [seg == k + 1 for k in range(3)]
    placement = place_scene(meshes, masks, SIZE, scene_size_m=3.0, camera=camera)
    prop_p = placement.instances[2]
    top = (placement.instances[0].vertices + placement.instances[0].transform[:3, 3])[:, 2].max()
    assert prop_p.support == 1
    assert prop_p.transform[2, 3] == pytest.approx(top, abs=1e-6)

    # Without the cabinet's pixels under the prop's outline the rays alone decide: the box behind.
    rows, cols = np.nonzero(masks[2])
    unseen = masks[0].copy()
    for c in np.unique(cols):
        unseen[rows[cols == c].max() + 1 :, c] = False
    placement = place_scene(meshes, [unseen, masks[1], masks[2]], SIZE, scene_size_m=3.0, camera=camera)
    assert placement.instances[2].support == 2


def test_default_scene_size_and_empty_meshes():
    meshes = _scene()
    camera = _true_camera()
    seg = _seg(meshes, camera)
    meshes[2] = None
    placement = place_scene(meshes, [seg == k + 1 for k in range(4)], SIZE, camera=camera)
    assert placement.instances[2] is None
    assert placement.diagnostics["empty_ids"] == [3]
    stacked = np.concatenate([p.vertices + p.transform[:3, 3] for p in placement.instances if p is not None])
    assert max(np.ptp(stacked[:, 0]), np.ptp(stacked[:, 1])) == pytest.approx(placement.diagnostics["scene_size_m"])
    with pytest.raises(ValueError, match="every mesh is empty"):
        place_scene([None], [seg == 1], SIZE, camera=camera)


def test_midi_to_view_maps_y_up_to_z_up():
    rotation = MIDI_TO_VIEW[:3, :3]
    assert np.allclose(rotation @ rotation.T, np.eye(3)) and np.linalg.det(rotation) == pytest.approx(1.0)
    assert np.allclose(rotation @ [0, 1, 0], [0, 0, 1])  # MIDI up (+Y) -> up (+Z)
    assert np.allclose(rotation @ [0, 0, -1], [0, 1, 0])  # MIDI's viewing direction (-Z) -> away from the camera
    assert np.allclose(rotation @ [1, 0, 0], [1, 0, 0])


def test_dev_case_with_ground_truth_meshes(shared_dir):
    from scenewright.evaluation.cases import load_case
    from scenewright.evaluation.metrics import reprojection_ious

    case = load_case(shared_dir / "benchmark" / "dev" / "case_002")
    ids = [inst.id for inst in case.instances]
    meshes = [(inst.mesh[0] * 0.5 + 3.0, inst.mesh[1]) for inst in case.instances]
    camera, _ = solve_camera(meshes, [case.seg == i for i in ids], (case.seg.shape[1], case.seg.shape[0]))
    ious = reprojection_ious(case.seg, ids, dict(zip(ids, meshes)), camera)
    assert np.mean(list(ious.values())) > 0.93
    assert abs(camera.fov_deg - case.camera.fov_deg) < 2.0


def test_yaw_is_solved_for_gravity_aligned_frames_and_levelled_by_placement():
    """MIDI-3D-like output: up is right but the scene is turned about +Z; the solve finds the turn, placement undoes it."""
    meshes = _scene()
    truth = _true_camera()
    seg = _seg(meshes, truth)
    angle = math.radians(40.0)
    turn = np.array([[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    turned = [(v @ turn.T, f) for v, f in meshes]
    masks = [seg == k + 1 for k in range(4)]
    camera, diagnostics = solve_camera(turned, masks, SIZE, CameraSolveConfig(solve_yaw=True))
    assert diagnostics["yaw_deg"] == pytest.approx(40.0, abs=3.0)
    assert abs(camera.fov_deg - truth.fov_deg) < 3.0 and abs(_pitch_deg(camera) - 30.0) < 3.0
    assert _reproj_iou(turned, seg, camera) > 0.95

    placement = place_scene(turned, masks, SIZE, scene_size_m=4.0, camera=camera)
    scene_camera = Camera.from_dict(placement.camera)
    assert np.allclose(view_frame_transform(scene_camera.matrix_world)[:3, :3], np.eye(3), atol=1e-9)
    table = placement.instances[0].vertices
    extents = np.ptp(table, axis=0)
    assert extents[0] / extents[1] == pytest.approx(1.2 / 0.8, rel=0.1)  # the table is square to the view again


def test_tilted_floor_is_levelled():
    """A prediction tilted by 4 degrees comes back with a level table top and every floor object at z = 0."""
    meshes = _scene()
    camera = _true_camera()
    seg = _seg(meshes, camera)
    a, b = math.radians(3.0), math.radians(-2.65)
    tilt = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(a), -math.sin(a)], [0.0, math.sin(a), math.cos(a)]])
    tilt = np.array([[math.cos(b), 0.0, math.sin(b)], [0.0, 1.0, 0.0], [-math.sin(b), 0.0, math.cos(b)]]) @ tilt
    tilted = [(v @ tilt.T, f) for v, f in meshes]
    placement = place_scene(tilted, [seg == k + 1 for k in range(4)], SIZE, scene_size_m=4.0)
    assert placement.diagnostics["ground_tilt_deg"] == pytest.approx(4.0, abs=0.3)
    table, slab = placement.instances[0], 0.05 * placement.diagnostics["scale_m_per_unit"]
    top = table.vertices[table.vertices[:, 2] > table.vertices[:, 2].max() - 1.5 * slab]
    assert np.ptp(top[:, 2]) < slab * 1.05  # the slab's own thickness; tilted it would be about 0.1 m more
    assert placement.instances[1].support == 1
    assert abs(_pitch_deg(Camera.from_dict(placement.camera)) - 30.0) < 3.0


def test_without_any_mask_for_a_mesh_the_camera_frames_the_scene():
    meshes = _scene()
    empty_masks = [np.zeros((SIZE[1], SIZE[0]), bool)] * 4
    camera, diagnostics = solve_camera(meshes, empty_masks, SIZE)
    assert diagnostics["fallback"] is True
    silhouettes = render_silhouettes(meshes, camera)
    inside = [s.any() and not (s[0].any() or s[-1].any() or s[:, 0].any() or s[:, -1].any()) for s in silhouettes]
    assert all(inside)  # every object in view, none cut by the border
    with pytest.raises(ValueError, match="non-empty mesh"):
        solve_camera([None], empty_masks[:1], SIZE)


def test_placement_benchmark_writes_predictions_with_camera(shared_dir, tmp_path):
    import json

    from scenewright.cli import main
    from scenewright.evaluation.cases import load_prediction

    assert main(["bench", "placement", str(shared_dir / "benchmark" / "dev"), "--out", str(tmp_path), "--case", "case_003"]) == 0
    summary = json.loads((tmp_path / "placement.json").read_text())["summary"]
    assert summary["cases"] == 1 and summary["reproj_iou_mean"] > 0.9
    assert summary["contacts_within_2pct"] == 1.0
    prediction = load_prediction(tmp_path / "PRED" / "case_003")
    assert prediction.camera is not None and sorted(prediction.meshes) == [1, 2, 3]


def test_refine_poses_fits_misplaced_instances_to_their_masks():
    """Instances shifted, scaled and turned away from their masks come back; contact heights stay."""
    meshes = _scene()
    camera = camera_from_params(25.0, 50.0, (0.0, -2.0, 2.2), SIZE)
    seg = _seg(meshes, camera)
    masks = [seg == k + 1 for k in range(len(meshes))]
    rng = np.random.default_rng(0)
    moved = []
    for vertices, faces in meshes:
        pivot = np.array([*(vertices[:, :2].min(axis=0) + vertices[:, :2].max(axis=0)) / 2, vertices[:, 2].min()])
        a = rng.uniform(-0.3, 0.3)
        turn = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
        shift = np.array([*rng.uniform(-0.3, 0.3, 2), 0.0])  # up to about half an object: far off its mask
        moved.append((((vertices - pivot) @ turn.T) * rng.uniform(0.8, 1.25) + pivot + shift, faces))

    def ious(candidate):
        silhouettes = render_silhouettes(candidate, camera)
        others = [np.any([m for j, m in enumerate(masks) if j != k], axis=0) for k in range(len(masks))]
        return np.array([(s & m).sum() / (m | (s & ~o)).sum() for s, m, o in zip(silhouettes, masks, others)])

    refined = refine_poses(moved, masks, camera).meshes
    before, after = ious(moved), ious(refined)
    assert after.mean() > before.mean() + 0.1 and after.mean() > 0.85
    assert (after >= before - 1e-9).all()  # a pose is only replaced by a better one
    for (v0, _), (v1, _) in zip(moved, refined):
        assert abs(v0[:, 2].min() - v1[:, 2].min()) < 1e-9  # bottoms (contacts) unchanged
    assert refine_poses([None, *moved[1:]], masks, camera).meshes[0] is None


def test_refine_poses_restores_the_aspect_of_stretched_instances():
    """Generated boxes are off per axis, not only in scale: a stretch along each axis comes back, bottoms kept."""
    meshes = _scene()
    camera = camera_from_params(25.0, 50.0, (0.0, -2.0, 2.2), SIZE)
    seg = _seg(meshes, camera)
    masks = [seg == k + 1 for k in range(len(meshes))]
    stretch = np.array([1.1, 1.0, 0.92])  # wider and lower, within STRETCH_LIMIT: no uniform scale undoes it
    stretched = []
    for vertices, faces in meshes:
        pivot = np.array([*(vertices[:, :2].min(axis=0) + vertices[:, :2].max(axis=0)) / 2, vertices[:, 2].min()])
        stretched.append(((vertices - pivot) * stretch + pivot, faces))
    refined = refine_poses(stretched, masks, camera).meshes

    def aspect_error(candidate):  # |log| of width over height relative to the truth's, per instance
        return np.array([abs(math.log((np.ptp(v, axis=0)[0] / np.ptp(v, axis=0)[2]) / (np.ptp(t, axis=0)[0] / np.ptp(t, axis=0)[2])))
                         for (v, _), (t, _) in zip(candidate, meshes)])

    # a uniform scale and a turn leave width over height as stretched (log 1.1 / 0.92 = 0.18 each)
    assert aspect_error(refined).mean() < 0.5 * aspect_error(stretched).mean()
    for (v0, _), (v1, _) in zip(stretched, refined):
        assert abs(v0[:, 2].min() - v1[:, 2].min()) < 1e-9


def _in_box(mesh, like):
    """`mesh` stretched per axis into the bounding box of `like` (another shape in the same pose)."""
    vertices, lo, hi = mesh[0], like[0].min(axis=0), like[0].max(axis=0)
    unit = (vertices - vertices.min(axis=0)) / np.ptp(vertices, axis=0)
    return lo + unit * (hi - lo), mesh[1]


def test_refine_poses_keeps_the_offered_shape_whose_silhouette_fits_the_mask():
    """A blob in the table's box gives way to the table among the shapes offered in its pose; a right shape stays,
    and an instance offered nothing is fitted as without alternatives."""
    meshes = _scene()
    camera = camera_from_params(25.0, 50.0, (0.0, -2.0, 2.2), SIZE)
    seg = _seg(meshes, camera)
    masks = [seg == k + 1 for k in range(len(meshes))]
    table = meshes[0]
    blob = _in_box(_box((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), table)
    shrunk = [(v * 0.95 + v.mean(axis=0) * 0.05, f) for v, f in meshes[1:]]  # a little off: each is refitted
    given = [blob, *shrunk]
    offered = [[_in_box(_cylinder(1.0, 1.0, (0.0, 0.0, 0.0)), blob), table], [], [], [_in_box(table, shrunk[2])]]
    fitted = refine_poses(given, masks, camera, alternatives=offered)
    first = refine_poses(given, masks, camera)
    refined, plain = fitted.meshes, first.meshes
    assert np.array_equal(refined[0][1], table[1]) and not np.array_equal(plain[0][1], table[1])
    assert _reproj_iou(refined[:1], seg, camera) > _reproj_iou(plain[:1], seg, camera) + 0.2
    assert np.array_equal(refined[3][1], shrunk[2][1])  # the box stays a box: a table fits its mask worse
    for k in (1, 2, 3):
        assert np.allclose(refined[k][0], plain[k][0])
    assert abs(refined[0][0][:, 2].min() - blob[0][:, 2].min()) < 1e-9  # the contact height kept
    # a second pass over the same meshes given the first pass's parameters: the same answer, without fitting
    # again (the parameters stand for the fit: given none, the generated poses stay)
    again = refine_poses(given, masks, camera, alternatives=offered, params=first.params)
    for (v0, f0), (v1, f1) in zip(refined, again.meshes):
        assert np.array_equal(v0, v1) and np.array_equal(f0, f1)
    assert all((p is None and q is None) or np.array_equal(p, q) for p, q in zip(fitted.params, again.params))
    unfitted = refine_poses(given, masks, camera, params=[None] * len(given)).meshes
    assert all(u is g for u, g in zip(unfitted, given))


def test_supported_instances_are_fitted_again_with_their_support_counting():
    """A generated prop too large and too far forward on its table spills over the table's top in the picture.
    Where the table's pixels may hide it (the fit before placement) a spilling pose fits perfectly; once the
    prop is known to rest on the table, which cannot hide it, the spill counts and the fit brings it back."""
    table, prop = _table((0.0, 3.0, 0.0)), _box((0.3, 0.3, 0.25), (0.1, 3.1, 0.75))
    camera = _true_camera()
    seg = _seg([table, prop], camera)
    masks = [seg == 1, seg == 2]
    pivot = np.array([0.1, 3.1, 0.75])
    generated = ((prop[0] - pivot) * 1.2 + pivot + [0.0, -0.14, 0.0], prop[1])  # larger, nearer the camera
    placement = place_scene([table, generated], masks, SIZE, camera=camera)
    assert placement.instances[1].support == 1
    scene_camera = Camera.from_dict(placement.camera)

    def world(p):
        return (p.vertices.astype(np.float64) + p.transform[:3, 3], p.faces)

    def fit(mesh, hidden):  # IoU of the prop's silhouette and mask; silhouette pixels in `hidden` are free
        s = render_silhouettes([mesh], scene_camera)[0]
        return (s & masks[1]).sum() / (masks[1] | (s & ~hidden)).sum()

    nothing = np.zeros_like(masks[1])
    hidden_by_table = refine_poses([None, world(placement.instances[1])], masks, scene_camera, 100).meshes[1]
    assert fit(hidden_by_table, masks[0]) > 0.99 and fit(hidden_by_table, nothing) < 0.87
    refitted = refine_supported(placement, masks)
    assert fit(world(refitted.instances[1]), nothing) > max(0.9, fit(hidden_by_table, nothing) + 0.05)
    bottom = lambda p: world(p)[0][:, 2].min()
    assert bottom(refitted.instances[1]) == pytest.approx(bottom(placement.instances[1]), abs=1e-6)  # still on the top
    assert refitted.instances[0] is placement.instances[0]  # the table rests on the ground: not refitted
    assert refitted.instances[1].support == 1 and refitted.camera == placement.camera


def test_props_recede_along_their_rays_keeping_their_pictures():
    """Moved back along its camera rays by 2 % of its distance, a prop on a table keeps its silhouette, is 2 %
    farther and larger, and sinks 2 % of its height below the camera into the table's top; a box on it keeps its
    contact; the table, on the ground, stays."""
    table, prop, stacked = _table((0.0, 3.0, 0.0)), _box((0.3, 0.3, 0.25), (0.1, 3.0, 0.75)), _box((0.1, 0.1, 0.1), (0.1, 3.0, 1.0))
    camera = _true_camera()
    seg = _seg([table, prop, stacked], camera)
    placement = place_scene([table, prop, stacked], [seg == k for k in (1, 2, 3)], SIZE, camera=camera)
    assert [p.support for p in placement.instances] == [None, 1, 2]
    assert recede_supported(placement, 0.0) is placement
    receded = recede_supported(placement, 0.02)
    scene_camera = Camera.from_dict(placement.camera)
    eye = scene_camera.matrix_world[:3, 3]
    before, after = ([p.world_vertices() for p in pl.instances] for pl in (placement, receded))
    centre = lambda v: (v.min(axis=0) + v.max(axis=0)) / 2.0
    assert np.array_equal(after[0], before[0])
    assert np.linalg.norm(centre(after[1])[:2] - eye[:2]) == pytest.approx(1.02 * np.linalg.norm(centre(before[1])[:2] - eye[:2]))
    assert np.ptp(after[1], axis=0) == pytest.approx(1.02 * np.ptp(before[1], axis=0))
    sink = before[1][:, 2].min() - after[1][:, 2].min()
    assert sink == pytest.approx(0.02 * (eye[2] - before[1][:, 2].min()), rel=1e-4) and sink > 0.02
    gap = lambda v: v[2][:, 2].min() - v[1][:, 2].max()
    assert abs(gap(after)) <= 1.02 * abs(gap(before)) + 1e-6
    faces = [p.faces for p in placement.instances]
    drawn = [render_silhouettes([(v, f) for v, f in zip(vs, faces)], scene_camera) for vs in (before, after)]
    assert (drawn[0][1] != drawn[1][1]).sum() <= 2 and drawn[0][1].sum() > 300  # the same picture
    assert receded.camera == placement.camera and [p.support for p in receded.instances] == [None, 1, 2]


def test_flat_tops_take_their_depth_from_the_pictures_shading():
    """A cabinet drawn 10 % too shallow and as much too tall as keeps its back-top edge on the same camera ray
    has nearly the same outline; its lit top (one colour in the picture, its front another) shows the depth.
    The fit brings depth and height back and the box resting on it follows its top along the camera rays; a
    sphere, which has no flat top, is left as it is."""
    cabinet, prop = _box((0.8, 0.6, 0.7), (0.0, 3.0, 0.0)), _box((0.2, 0.2, 0.2), (0.05, 3.0, 0.7))
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.25)
    ball = (np.asarray(sphere.vertices) + [-1.0, 2.6, 0.25], np.asarray(sphere.faces))
    camera = _true_camera()
    eye = camera.matrix_world[:3, 3]
    seg = _seg([cabinet, prop, ball], camera)
    top_faces = np.abs(np.cross(*(cabinet[0][cabinet[1][:, k]] - cabinet[0][cabinet[1][:, 0]] for k in (1, 2)))[:, 2]) > 0
    top_faces &= cabinet[0][cabinet[1]][:, :, 2].min(axis=1) > 0.69
    image = np.full((*seg.shape, 3), 0.8)
    image[seg == 1] = (0.2, 0.2, 0.6)  # the cabinet's front and sides
    image[(seg == 1) & render_silhouettes([(cabinet[0], cabinet[1][top_faces])], camera)[0]] = (0.5, 0.5, 0.9)  # its lit top
    image[seg == 2], image[seg == 3] = (0.9, 0.3, 0.1), (0.1, 0.6, 0.1)

    shallow, top = _deeper_on_ray(cabinet[0], eye, -0.1)
    raised_prop = eye + (prop[0] - eye) * ((top - eye[2]) / (0.7 - eye[2]))  # on the shallow top, the same picture
    masks = [seg == k + 1 for k in range(3)]
    placement = place_scene([(shallow, cabinet[1]), (raised_prop, prop[1]), ball], masks, SIZE, camera=camera)
    assert [p.support for p in placement.instances] == [None, 1, None]
    _assert_depth_fitted(placement, fit_depths(placement, masks, image), cabinet[0], prop[0])


def _deeper_on_ray(vertices, eye, factor):
    """The depth times exp(factor) about the front and the height that keeps the back-top edge on its camera ray
    (the outline stays), and the new top's height; for a box or cylinder standing on z = 0."""
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    back = lo[1] + (hi[1] - lo[1]) * math.exp(factor)
    top = eye[2] + (back - eye[1]) / (hi[1] - eye[1]) * (hi[2] - eye[2])
    out = vertices.copy()
    out[:, 1] = lo[1] + (out[:, 1] - lo[1]) * (back - lo[1]) / (hi[1] - lo[1])
    out[:, 2] *= top / hi[2]
    return out, top


def _assert_depth_fitted(placement, fitted, true_support, true_prop):
    """fit_depths brought instance 0 (off before) and the prop resting on it back to their true boxes, in the
    placement's scene frame, and left instance 2 as it was."""
    to_scene = placement.scene_from_input
    box = lambda v: (v.min(axis=0), v.max(axis=0))
    world = lambda p: box(p.vertices.astype(np.float64) + p.transform[:3, 3])
    truth = lambda v: box(v @ to_scene[:3, :3].T + to_scene[:3, 3])
    for placed, true_vertices in ((fitted.instances[0], true_support), (fitted.instances[1], true_prop)):
        assert np.allclose(world(placed), truth(true_vertices), atol=1e-6)
    assert not np.allclose(world(placement.instances[0]), truth(true_support), atol=1e-2)  # it was off before
    assert fitted.instances[2] is placement.instances[2]


def test_upright_frames_are_not_levelled():
    """With level_floor off (a model upright by construction) a fitted tilt is reported but the scene is not turned."""
    meshes = _scene()
    camera = _true_camera()
    seg = _seg(meshes, camera)
    a = math.radians(4.0)
    tilt = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(a), -math.sin(a)], [0.0, math.sin(a), math.cos(a)]])
    tilted = [(v @ tilt.T, f) for v, f in meshes]
    masks = [seg == k + 1 for k in range(4)]
    levelled = place_scene(tilted, masks, SIZE, scene_size_m=4.0, camera=camera)
    kept = place_scene(tilted, masks, SIZE, scene_size_m=4.0, camera=camera, level_floor=False)
    assert levelled.diagnostics["ground_levelled"] and not kept.diagnostics["ground_levelled"]
    assert kept.diagnostics["ground_tilt_deg"] == pytest.approx(4.0, abs=0.3)
    assert np.allclose(kept.scene_from_input[:3, :3] / kept.diagnostics["scale_m_per_unit"], np.eye(3), atol=1e-9)
    assert not np.allclose(levelled.scene_from_input[:3, :3] / levelled.diagnostics["scale_m_per_unit"], np.eye(3), atol=1e-3)


def test_round_footprints_are_made_as_deep_as_they_are_wide():
    """A cylinder drawn 15 % too deep and as much too low as keeps its back-top edge on the same camera ray has
    nearly the same outline; a round footprint is as deep as it is wide, and its width is what the mask gives.
    The fit brings depth and height back, the box resting on it follows its top along the camera rays, and a
    box on the ground whose footprint is a square (as deep as it is wide, but not round) is left as it is even
    in the same plain colour (no shading to read)."""
    drum, prop = _cylinder(0.3, 0.5, (0.0, 3.0, 0.0)), _box((0.15, 0.15, 0.15), (0.0, 3.0, 0.5))
    crate = _box((0.5, 0.5, 0.4), (-1.1, 3.2, 0.0))
    camera = _true_camera()
    eye = camera.matrix_world[:3, 3]
    seg = _seg([drum, prop, crate], camera)
    image = np.full((*seg.shape, 3), 0.8)
    image[seg == 1], image[seg == 2], image[seg == 3] = (0.2, 0.2, 0.6), (0.9, 0.3, 0.1), (0.2, 0.2, 0.6)

    deep_drum, top = _deeper_on_ray(drum[0], eye, 0.15)
    lowered_prop = eye + (prop[0] - eye) * ((top - eye[2]) / (0.5 - eye[2]))  # on the lower top, the same picture
    deep_crate, _ = _deeper_on_ray(crate[0], eye, 0.15)
    masks = [seg == k + 1 for k in range(3)]
    placement = place_scene([(deep_drum, drum[1]), (lowered_prop, prop[1]), (deep_crate, crate[1])], masks, SIZE,
                            camera=camera)
    assert [p.support for p in placement.instances] == [None, 1, None]
    _assert_depth_fitted(placement, fit_depths(placement, masks, image), drum[0], prop[0])


def test_silhouette_fits_say_how_well_a_placed_scene_explains_the_masks():
    """Each placed instance's silhouette against its mask, as drawn in full, pixels on other masks free (the box on
    the table hides part of the table): the true scene fits, an instance moved off its mask does not while the
    others keep their fits, and an empty instance scores 0."""
    meshes, camera = _scene(), _true_camera()
    seg = _seg(meshes, camera)
    masks = [seg == k + 1 for k in range(len(meshes))]

    def drawn(placement):  # the same IoU from full silhouettes
        silhouettes = render_silhouettes([(p.world_vertices(), p.faces) for p in placement.instances],
                                         Camera.from_dict(placement.camera))
        others = other_masks(masks, masks)
        return np.array([(s & m).sum() / (m | (s & ~o)).sum() for s, m, o in zip(silhouettes, masks, others)])

    placement = place_scene(meshes, masks, SIZE, camera=camera)
    fits = silhouette_fits([placement], masks)[0]
    assert np.allclose(fits, drawn(placement)) and (fits > 0.95).all()
    vertices, faces = meshes[2]
    off = place_scene([*meshes[:2], (vertices + [0.4, 0.0, 0.0], faces), meshes[3]], masks, SIZE, camera=camera)
    moved = silhouette_fits([off], masks)[0]
    assert moved[2] < fits[2] - 0.3 and np.allclose(np.delete(moved, 2), np.delete(fits, 2), atol=0.01)
    empty = place_scene([None, *meshes[1:]], masks, SIZE, camera=camera)
    assert silhouette_fits([empty], masks)[0][0] == 0.0
