"""PROTOCOL.md section 4 metrics on hand-made cases: real case folders in tmp_path, meshes from trimesh primitives."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from scenewright.camera import Camera, render_silhouettes, view_frame_transform
from scenewright.evaluation.cases import load_case, load_prediction, write_mesh
from scenewright.evaluation.metrics import box_errors, box_iou, count_distinct, sample_surface, score_case, summarise

RES = 128


def camera_matrix(yaw_deg: float, elevation_deg: float = 30.0, distance: float = 12.0, target=(1.0, 0.5, 1.0)) -> np.ndarray:
    """Blender camera matrix looking at `target`; yaw 0 looks along +Y (then the view frame is the world frame)."""
    yaw, elev = math.radians(yaw_deg), math.radians(elevation_deg)
    forward = np.array([-math.sin(yaw) * math.cos(elev), math.cos(yaw) * math.cos(elev), -math.sin(elev)])
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    matrix = np.eye(4)
    matrix[:3, 0], matrix[:3, 1], matrix[:3, 2] = right, up, -forward
    matrix[:3, 3] = np.asarray(target) - distance * forward
    return matrix


def box(lo, hi) -> trimesh.Trimesh:
    return trimesh.creation.box(bounds=[lo, hi])


def write_case(folder: Path, meshes: dict[int, trimesh.Trimesh], matrix: np.ndarray,
               supports: dict[int, int] | None = None) -> Camera:
    """A case in the benchmark format; seg.png holds each instance's silhouette through the camera."""
    camera = Camera(matrix, 50.0, (RES, RES))
    (folder / "instances").mkdir(parents=True)
    sils = render_silhouettes([(m.vertices, m.faces) for m in meshes.values()], camera)
    seg = np.zeros((RES, RES), np.uint8)
    for inst_id, sil in zip(meshes, sils):
        seg[sil & (seg == 0)] = inst_id
    Image.fromarray(seg).save(folder / "seg.png")
    Image.new("RGB", (RES, RES), (230, 230, 230)).save(folder / "image.png")
    instances = []
    for inst_id, mesh in meshes.items():
        mesh.export(folder / "instances" / f"{inst_id}.ply")
        instances.append({"id": inst_id, "label": "thing", "mesh": f"instances/{inst_id}.ply",
                          "support": (supports or {}).get(inst_id)})
    scene = {"format": "scene-case/1", "camera": camera.to_dict(), "instances": instances, "ground_z": 0.0}
    (folder / "scene.json").write_text(json.dumps(scene))
    return camera


def write_pred(folder: Path, meshes: dict[int, trimesh.Trimesh], camera: dict | None = None) -> None:
    folder.mkdir(parents=True)
    for inst_id, mesh in meshes.items():
        write_mesh(folder / f"{inst_id}.ply", (np.asarray(mesh.vertices, np.float64), mesh.faces))
    if camera is not None:
        (folder / "camera.json").write_text(json.dumps(camera))


def in_view_frame(mesh: trimesh.Trimesh, matrix: np.ndarray) -> trimesh.Trimesh:
    return mesh.copy().apply_transform(view_frame_transform(matrix))


def score(tmp_path: Path, gt: dict, pred: dict, matrix: np.ndarray, camera: dict | None = None) -> dict:
    write_case(tmp_path / "case", gt, matrix)
    write_pred(tmp_path / "pred", pred, camera)
    return score_case(load_case(tmp_path / "case"), load_prediction(tmp_path / "pred"))


def furniture() -> dict[int, trimesh.Trimesh]:
    cylinder = trimesh.creation.cylinder(radius=0.4, height=1.2)
    cylinder.apply_translation([2.5, 0.5, 0.6])
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.3)
    sphere.apply_translation([0.5, 0.5, 1.3])
    return {1: box([0, 0, 0], [1, 1, 1]), 2: cylinder, 3: sphere}


def test_prediction_equal_to_gt_scores_perfectly(tmp_path):
    matrix = camera_matrix(yaw_deg=35.0)
    gt = furniture()
    result = score(tmp_path, gt, {k: in_view_frame(m, matrix) for k, m in gt.items()}, matrix)
    assert result["cd_s"] < 1e-8 and result["cd_o"] < 1e-8  # PLY stores float32
    assert result["f_s"] == 1.0 and result["f_o"] == 1.0
    assert result["iou_b"] == pytest.approx(1.0, abs=1e-6)
    assert result["lcd"] == pytest.approx(0.0, abs=1e-6)
    assert result["ssr"] == 1.0 and result["n_distinct"] == 3
    assert result["reproj_iou"] is None  # no camera reported


def test_prediction_in_world_frame_is_penalised(tmp_path):
    """GT is compared in the view frame: a prediction left in the world frame (yaw 90 deg) loses IoU-B and LCD."""
    matrix = camera_matrix(yaw_deg=90.0)
    gt = furniture()
    result = score(tmp_path, gt, gt, matrix)
    assert result["iou_b"] < 0.5 and result["lcd"] > 0.3


def test_translated_instance_lowers_iou_b_and_raises_lcd_by_the_analytic_amounts(tmp_path):
    # Two unit cubes 1 apart along x. Moving cube 2 by d along y grows the
    # predicted scene box to y in [0, 1 + d]; the longest side stays x = 3, so
    # both sides scale by 2/3 and the predicted scene centre moves by d/2:
    # in the normalised frames cube 1 shifts by -d/3 and cube 2 by +d/3 in y.
    # Each box keeps its size (2/3), so IoU = (2/3 - d/3) / (2/3 + d/3) for
    # both, and each centre's nearest GT centre is its own (4/3 away from
    # the other): LCD = d/3 + d/3.
    d = 0.5
    matrix = camera_matrix(yaw_deg=0.0)  # view frame == world frame
    gt = {1: box([0, 0, 0], [1, 1, 1]), 2: box([2, 0, 0], [3, 1, 1])}
    moved = {1: box([0, 0, 0], [1, 1, 1]), 2: box([2, d, 0], [3, 1 + d, 1])}
    result = score(tmp_path, gt, moved, matrix)
    expected_iou = (2 / 3 - d / 3) / (2 / 3 + d / 3)
    assert [row["iou_b"] for row in result["instances"]] == pytest.approx([expected_iou, expected_iou], abs=1e-9)
    assert result["lcd"] == pytest.approx(2 * d / 3, abs=1e-9)
    assert result["ssr"] == 1.0


def test_box_error_names_the_axis_a_box_is_off_along(tmp_path):
    """The translated-instance case above: both boxes are off along y (depth) only, by d/3 of a 2/3 side."""
    d = 0.5
    matrix = camera_matrix(yaw_deg=0.0)
    gt = {1: box([0, 0, 0], [1, 1, 1]), 2: box([2, 0, 0], [3, 1, 1]), 3: box([4, 0, 0], [5, 1, 1])}
    moved = {1: gt[1], 2: box([2, d, 0], [3, 1 + d, 1]), 3: trimesh.Trimesh()}
    result = score(tmp_path, gt, moved, matrix)
    rows = {row["id"]: row for row in result["instances"]}
    assert rows[3]["box_error"] is None
    # the predicted scene box is x in [0, 3], y in [0, 1 + d]: both sides scale by 2/3 (pred) and 2/5 (GT)
    for k in (1, 2):
        error = rows[k]["box_error"]
        assert error["log_size_ratio"] == pytest.approx([math.log(5 / 3)] * 3, abs=1e-9)
    assert rows[1]["box_error"]["centre_error"][1] < 0 < rows[2]["box_error"]["centre_error"][1]
    summary = summarise([result])["box_error"]
    assert summary["all"]["n_instances"] == 3
    # instance 3 is empty: it counts 0 in the mean with each axis from the GT, as it does in IoU-B
    assert summary["all"]["iou_b_with_gt_axis"] == pytest.approx(
        [np.mean([rows[k]["box_error"]["iou_b_with_gt_axis"][axis] for k in (1, 2)] + [0.0]) for axis in range(3)])
    assert summary["all"]["iou_b_with_gt_centre"] == pytest.approx(
        np.mean([rows[k]["box_error"]["iou_b_with_gt_centre"] for k in (1, 2)] + [0.0]))


def test_box_error_of_a_box_off_along_one_axis():
    gt = (np.array([0.0, 0.0, 0.0]), np.array([1.0, 2.0, 1.0]))
    pred = (np.array([0.0, 0.5, 0.0]), np.array([1.0, 3.5, 1.0]))  # y: moved by 1, grown by 1.5
    error = box_errors(pred, gt)
    assert error["centre_error"] == pytest.approx([0.0, 1.0 / 2.0, 0.0])
    assert error["log_size_ratio"] == pytest.approx([0.0, math.log(1.5), 0.0])
    assert error["iou_b_with_gt_axis"][1] == pytest.approx(1.0)
    assert error["iou_b_with_gt_axis"][0] == error["iou_b_with_gt_axis"][2] == pytest.approx(box_iou(pred, gt))
    assert box_iou(pred, gt) == pytest.approx(1.5 / 3.5)
    # on the GT's centre the box is 1.5 times too deep, all inside: 2 / 3; with the GT's size about its own
    # centre (y 1.0..3.0) it overlaps 1.0 of 3.0
    assert error["iou_b_with_gt_centre"] == pytest.approx(2.0 / 3.0)
    assert error["iou_b_with_gt_size"] == pytest.approx(1.0 / 3.0)


def test_missing_instance_lowers_ssr_and_scores_empty(tmp_path):
    matrix = camera_matrix(yaw_deg=0.0)
    gt = {1: box([0, 0, 0], [1, 1, 1]), 2: box([2, 0, 0], [3, 1, 1]), 3: box([4, 0, 0], [5, 1, 1])}
    result = score(tmp_path, gt, {1: gt[1], 3: gt[3]}, matrix)
    rows = {row["id"]: row for row in result["instances"]}
    assert rows[2]["empty"] and rows[2]["f_o"] == 0.0 and rows[2]["cd_o"] == 1.0 and rows[2]["iou_b"] == 0.0
    assert rows[1]["f_o"] == 1.0 and rows[3]["f_o"] == 1.0
    assert result["ssr"] == pytest.approx(2 / 3)
    assert result["f_o"] == pytest.approx(2 / 3)


def test_instance_means_are_also_split_by_ground_truth_support(tmp_path):
    """The sphere rests on the box (scene.json's support): its empty prediction shows in the supported group only."""
    matrix = camera_matrix(yaw_deg=0.0)
    gt = furniture()
    write_case(tmp_path / "case", gt, matrix, supports={3: 1})
    write_pred(tmp_path / "pred", {1: gt[1], 2: gt[2]})
    result = score_case(load_case(tmp_path / "case"), load_prediction(tmp_path / "pred"))
    groups = summarise([result])["means_by_support"]
    assert groups["supported"]["n_instances"] == 1 and groups["supported"]["iou_b"] == 0.0
    assert groups["ground"]["n_instances"] == 2 and groups["ground"]["f_o"] == 1.0
    assert groups["ground"]["iou_b"] < 1.0  # the scene box lost the sphere, so every box moved a little


def test_empty_mesh_file_counts_as_empty(tmp_path):
    matrix = camera_matrix(yaw_deg=0.0)
    gt = {1: box([0, 0, 0], [1, 1, 1]), 2: box([2, 0, 0], [3, 1, 1])}
    result = score(tmp_path, gt, {1: gt[1], 2: trimesh.Trimesh()}, matrix)
    assert result["n_pred"] == 1 and result["ssr"] == 0.5
    assert result["instances"][1]["empty"] and result["instances"][1]["iou_b"] == 0.0


def test_two_predictions_of_the_same_object_are_fused_and_count_once(tmp_path):
    matrix = camera_matrix(yaw_deg=0.0)
    gt = {1: box([0, 0, 0], [1, 1, 1]), 2: box([2, 0, 0], [3, 1, 1])}
    duplicate = box([0.05, 0, 0], [1.05, 1, 1])  # IoU with instance 1 is 0.95 / 1.05
    result = score(tmp_path, gt, {1: gt[1], 2: duplicate}, matrix)
    assert result["n_pred"] == 2 and result["n_distinct"] == 1
    assert result["ssr"] == 0.5


def test_touching_objects_are_not_fused():
    """A sphere resting on a cube and a cube beside it: three groups, although they touch."""
    meshes = furniture()
    assert count_distinct([(m.vertices, m.faces) for m in meshes.values()]) == 3
    cube = box([0, 0, 0], [1, 1, 1])
    half = box([0, 0, 0], [1, 1, 0.45])  # occupancy IoU with the cube about 0.45
    assert count_distinct([(cube.vertices, cube.faces), (half.vertices, half.faces)]) == 2


def test_rotated_scaled_offset_scene_aligns_to_cd_zero(tmp_path):
    # Tall objects: the scene's longest side is its height, so a rotation about
    # Z leaves the normalising scale unchanged and only ICP's rotation and
    # translation are needed.
    matrix = camera_matrix(yaw_deg=20.0)
    tower = trimesh.creation.cylinder(radius=0.5, height=4.0)
    tower.apply_translation([0, 0, 2])
    gt = {1: tower, 2: box([1.2, -0.5, 0], [2.2, 0.5, 3]), 3: box([-1.5, 0.3, 0], [-0.9, 0.9, 1.5])}
    turn = trimesh.transformations.rotation_matrix(math.radians(8.0), [0, 0, 1])
    pred = {}
    for k, mesh in gt.items():
        moved = in_view_frame(mesh, matrix).apply_transform(turn)
        moved.apply_scale(1.7)
        moved.apply_translation([3.0, -2.0, 0.5])
        pred[k] = moved
    result = score(tmp_path, gt, pred, matrix)
    assert result["cd_s"] < 1e-8 and result["f_s"] == 1.0
    assert result["cd_o"] < 0.05  # per-axis normalisation after a rotation reshapes each object a little
    assert result["iou_b"] < 0.95  # IoU-B is measured before alignment: the turn costs box overlap


def test_reproj_iou_is_one_through_the_gt_camera(tmp_path):
    matrix = camera_matrix(yaw_deg=-30.0)
    gt = {1: box([0, 0, 0], [1, 1, 1]), 2: box([2.5, 0, 0], [3, 0.5, 2])}
    to_view = view_frame_transform(matrix)
    camera = Camera(to_view @ matrix, 50.0, (RES, RES)).to_dict()  # the GT camera, in the prediction's frame
    result = score(tmp_path, gt, {k: in_view_frame(m, matrix) for k, m in gt.items()}, matrix, camera)
    assert all(row["reproj_iou"] > 0.98 for row in result["instances"])

    shifted = dict(camera, fov_deg=65.0)  # a wrong camera must score lower
    worse = score_case(load_case(tmp_path / "case"), _with_camera(tmp_path / "pred", shifted))
    assert all(row["reproj_iou"] < 0.8 for row in worse["instances"])


def _with_camera(folder: Path, camera: dict):
    (folder / "camera.json").write_text(json.dumps(camera))
    return load_prediction(folder)


def test_sampling_is_seeded_and_area_uniform():
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [3, 0, 0], [3, 3, 0], [0, 3, 0]], float)
    faces = np.array([[0, 1, 2], [3, 4, 5]])  # areas 0.5 and 4.5
    first = sample_surface((vertices, faces), 20_480, (0, 7, 0))
    assert np.array_equal(first, sample_surface((vertices, faces), 20_480, (0, 7, 0)))
    assert not np.array_equal(first, sample_surface((vertices, faces), 20_480, (0, 8, 0)))
    in_small = (first[:, 0] + first[:, 1] <= 1.0 + 1e-12).mean()
    assert in_small == pytest.approx(0.1, abs=0.01)


def test_missing_prediction_folder_scores_worst(tmp_path):
    matrix = camera_matrix(yaw_deg=0.0)
    write_case(tmp_path / "case", {1: box([0, 0, 0], [1, 1, 1]), 2: box([2, 0, 0], [3, 1, 1])}, matrix)
    result = score_case(load_case(tmp_path / "case"), load_prediction(tmp_path / "no-such-prediction"))
    assert (result["cd_s"], result["f_s"], result["ssr"], result["iou_b"]) == (1.0, 0.0, 0.0, 0.0)
    assert result["lcd"] == pytest.approx(2 * math.sqrt(3)) and result["errors"]


def test_glb_and_obj_predictions_read_as_stored(tmp_path):
    matrix = camera_matrix(yaw_deg=0.0)
    gt = {1: box([0, 0, 0], [1, 1, 1]), 2: box([2, 0, 0], [3, 1, 2])}
    write_case(tmp_path / "case", gt, matrix)
    (tmp_path / "pred").mkdir()
    gt[1].export(tmp_path / "pred" / "1.glb")
    gt[2].export(tmp_path / "pred" / "2.obj")
    result = score_case(load_case(tmp_path / "case"), load_prediction(tmp_path / "pred"))
    assert result["n_pred"] == 2 and result["iou_b"] == pytest.approx(1.0, abs=1e-6) and result["f_s"] == 1.0


def test_unreadable_prediction_file_scores_empty_and_is_reported(tmp_path):
    matrix = camera_matrix(yaw_deg=0.0)
    gt = {1: box([0, 0, 0], [1, 1, 1]), 2: box([2, 0, 0], [3, 1, 1])}
    write_case(tmp_path / "case", gt, matrix)
    (tmp_path / "pred").mkdir()
    write_mesh(tmp_path / "pred" / "1.ply", (np.asarray(gt[1].vertices, float), gt[1].faces))
    header = "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
    header += "element face 1\nproperty list uchar int vertex_indices\nend_header\n"
    (tmp_path / "pred" / "2.ply").write_text(header + "0 0 0\n1 0 0\n0 1 0\n3 0 1 9\n")  # vertex 9 does not exist
    result = score_case(load_case(tmp_path / "case"), load_prediction(tmp_path / "pred"))
    assert result["instances"][1]["empty"] and result["n_pred"] == 1 and result["errors"]
