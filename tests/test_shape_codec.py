"""The default model's shape codec: canonical frames, signed-distance grids, PCA, decoding to placed meshes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from scenewright.camera import view_frame_transform
from scenewright.data.scenes import sample_scene
from scenewright.data.shapes import inside, make_shape
from scenewright.models.shape_codec import BoxPose, ShapeCodecConfig, canonical_quarter_turn, grid_coordinates
from scenewright.training.data import SceneNormalization
from scenewright.training.shape_grids import canonical_object, fit_codec, mirror_x, sdf_grid, winding_occupancy


def _unit(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
    low, high = mesh.bounds
    return (np.asarray(mesh.vertices) - (low + high) / 2) / (high - low), np.asarray(mesh.faces)


@pytest.mark.parametrize("label", ["chair", "table", "stool", "lamp", "torus", "cabinet"])
def test_winding_occupancy_matches_the_winding_number(label: str) -> None:
    vertices, faces = _unit(make_shape(label, np.random.default_rng(3)).mesh)
    axis = grid_coordinates(16)
    occupancy = winding_occupancy(vertices, faces, axis)
    points = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    expected = inside(trimesh.Trimesh(vertices, faces, process=False), points).reshape(occupancy.shape)
    assert occupancy.any()
    assert (occupancy != expected).mean() < 0.002  # rays grazing an edge may differ, nothing else


def test_sdf_grid_of_a_sphere_is_its_distance() -> None:
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    grid = sdf_grid(np.asarray(sphere.vertices), np.asarray(sphere.faces), 24, 0.1, np.random.default_rng(0))
    axis = grid_coordinates(24)
    points = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1)
    exact = np.clip(np.linalg.norm(points, axis=-1) - 0.5, -0.1, 0.1)
    assert grid.shape == (24, 24, 24)
    error = np.abs(grid - exact)
    assert error.max() < 0.02 and error[np.abs(exact) < 0.05].mean() < 0.002  # a cell is 0.045 wide
    assert ((grid < 0) == (exact < 0)).mean() > 0.999


def test_canonical_object_rebuilds_the_view_frame_mesh() -> None:
    """pose.apply(unit mesh) is the object in the scene's normalised view frame, for every yaw in the data."""
    checked = 0
    for seed in range(6):
        scene = sample_scene(seed)
        to_view = view_frame_transform(scene.camera.matrix_world)
        worlds = [o.world_mesh() for o in scene.objects]
        views = [np.asarray(w.vertices) @ to_view[:3, :3].T for w in worlds]
        norm = SceneNormalization.fit(views)
        for obj, world, view in zip(scene.objects, worlds, views):
            canonical = canonical_object(np.asarray(world.vertices), np.asarray(world.faces), obj.matrix_world, to_view,
                                         norm.center, norm.scale)
            assert -math.pi / 4 <= canonical.pose.yaw < math.pi / 4
            assert np.allclose(canonical.unit_vertices.min(axis=0), -0.5) and np.allclose(canonical.unit_vertices.max(axis=0), 0.5)
            assert np.allclose(canonical.pose.apply(canonical.unit_vertices), norm.apply(view), atol=1e-9)
            assert np.allclose(BoxPose.from_vector(canonical.pose.to_vector()).apply(canonical.unit_vertices),
                               norm.apply(view), atol=1e-6)
            checked += 1
    assert checked > 10


def test_quarter_turns() -> None:
    for yaw in np.linspace(-7.0, 7.0, 57):
        k, residual = canonical_quarter_turn(float(yaw))
        assert -math.pi / 4 <= residual < math.pi / 4 and 0 <= k < 4
        assert math.isclose(math.cos(yaw), math.cos(k * math.pi / 2 + residual), abs_tol=1e-9)
        assert math.isclose(math.sin(yaw), math.sin(k * math.pi / 2 + residual), abs_tol=1e-9)


def test_mirror_is_the_object_mirrored_through_x() -> None:
    shape = make_shape("chair", np.random.default_rng(1)).mesh
    unit, faces = _unit(shape)
    pose = BoxPose(np.array([0.3, -0.2, 0.1]), np.array([0.4, 0.3, 0.5]), 0.3)
    grid = sdf_grid(unit, faces, 16, 0.1, np.random.default_rng(0))
    mirrored_pose, mirrored_grid = mirror_x(pose.to_vector(), grid)
    flip = np.array([-1.0, 1.0, 1.0])
    assert np.allclose(BoxPose.from_vector(mirrored_pose).apply(unit * flip), pose.apply(unit) * flip)
    # the grid of the mirrored unit mesh (faces turned to stay outward) is the flipped grid
    direct = sdf_grid(unit * flip, faces[:, ::-1], 16, 0.1, np.random.default_rng(0))
    assert ((direct < 0) == (mirrored_grid < 0)).mean() > 0.995


def _objects(count: int, resolution: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = ["box", "table", "chair", "sphere", "cylinder", "lamp", "stool", "cabinet"]
    grids, poses = [], []
    for k in range(count):
        unit, faces = _unit(make_shape(labels[k % len(labels)], rng).mesh)
        grids.append(sdf_grid(unit, faces, resolution, 0.1, rng).reshape(-1))
        poses.append(BoxPose(rng.normal(size=3) * 0.3, np.exp(rng.normal(size=3) * 0.3) * 0.4, rng.uniform(-0.7, 0.7)).to_vector())
    return np.stack(grids), np.stack(poses)


def test_fit_codec_whitens_and_reconstructs() -> None:
    grids, poses = _objects(24)
    config = ShapeCodecConfig(grid_resolution=16, num_components=23, tokens=31 // 1, channels=1)
    codec = fit_codec(grids, poses, config)
    coefficients = codec.project(torch.from_numpy(grids))
    assert torch.allclose(coefficients.std(dim=0), torch.ones(23), atol=1e-3)  # whitened
    assert torch.allclose(coefficients.mean(dim=0), torch.zeros(23), atol=1e-3)
    # n - 1 components span the centred training grids: reconstruction is exact
    rebuilt = codec.grids(coefficients).reshape(len(grids), -1)
    assert torch.allclose(rebuilt, torch.from_numpy(grids), atol=2e-4)
    latents = codec.pack(torch.from_numpy(poses), coefficients)
    assert latents.shape == (24, 31, 1)
    back_poses, back_coefficients = codec.unpack(latents)
    assert torch.allclose(back_poses.double(), torch.from_numpy(poses), atol=1e-5)
    assert torch.allclose(back_coefficients, coefficients, atol=1e-6)


def test_codec_meshes_are_placed_by_their_pose() -> None:
    grids, poses = _objects(17)
    codec = fit_codec(grids, poses, ShapeCodecConfig(grid_resolution=16, num_components=16, tokens=3, channels=8))
    box = np.flatnonzero([True] + [False] * 16)  # object 0 is a box: it fills its canonical box
    latents = codec.pack(torch.from_numpy(poses), codec.project(torch.from_numpy(grids)))
    meshes = codec.meshes(latents)
    assert all(m is not None and len(m[1]) > 0 for m in meshes)
    pose = BoxPose.from_vector(poses[box[0]])
    vertices = meshes[box[0]][0] - pose.centre
    local = vertices @ np.array([[math.cos(pose.yaw), -math.sin(pose.yaw), 0], [math.sin(pose.yaw), math.cos(pose.yaw), 0],
                                 [0, 0, 1]])  # rotate back: row vectors times R
    assert np.allclose(np.abs(local).max(axis=0), pose.extents / 2, rtol=0.05)
    finer = codec.meshes(latents[:2], resolution=32)
    assert len(finer[0][1]) > len(meshes[0][1])


def test_small_floating_pieces_are_dropped():
    from scenewright.models.shape_codec import drop_small_pieces

    big, small = trimesh.creation.box(extents=(1, 1, 1)), trimesh.creation.box(extents=(0.1, 0.1, 0.1))
    small.apply_translation((3, 0, 0))
    both = trimesh.util.concatenate([big, small])
    vertices, faces = drop_small_pieces(np.asarray(both.vertices), np.asarray(both.faces), 0.1)
    assert len(faces) == 12 and len(vertices) == 8 and np.abs(vertices).max() == pytest.approx(0.5)
    kept = drop_small_pieces(np.asarray(both.vertices), np.asarray(both.faces), 0.001)
    assert len(kept[1]) == 24  # 1 % of the area is above 0.1 %: both stay


def test_alternatives_are_the_nearest_library_shapes_by_grid_distance_in_the_samples_pose() -> None:
    from scenewright.training.shape_library import add_library

    grids, poses = _objects(17)
    codec = fit_codec(grids, poses, ShapeCodecConfig(grid_resolution=16, num_components=16, tokens=3, channels=8))
    library = codec.project(torch.from_numpy(grids))
    with_library = add_library(codec, library)
    samples = library[:5] + torch.from_numpy(np.random.default_rng(3).normal(size=(5, 16))).float() * 0.8
    # by brute force on the decoded grids: the 3 library grids nearest each sample's grid, nearest first
    distance = torch.cdist(with_library.grids(samples).reshape(5, -1), with_library.grids(library).reshape(17, -1))
    expected = distance.topk(3, largest=False).indices
    assert torch.equal(with_library.nearest_library_shapes(samples, 3), expected)
    assert codec.nearest_library_shapes(samples, 3).shape == (5, 0)  # no library: none
    latents = with_library.pack(torch.from_numpy(poses[:5]), samples)
    # a sample still decodes as sampled; each alternative as its library shape in the sample's pose
    for (v, f), (w, g) in zip(with_library.meshes(latents), codec.meshes(latents)):
        assert np.array_equal(f, g) and np.allclose(v, w)
    alternatives = with_library.alternatives(latents, 3)
    for k, meshes in enumerate(alternatives):
        assert len(meshes) == 3
        in_pose = codec.meshes(codec.pack(torch.from_numpy(poses[k : k + 1]).repeat(3, 1), library[expected[k]]))
        for (v, f), (w, g) in zip(meshes, in_pose):
            assert np.array_equal(f, g) and np.allclose(v, w, atol=1e-5)
    assert codec.alternatives(latents, 3) == [[]] * 5


def test_a_codec_with_a_library_saves_and_loads(tmp_path) -> None:
    from scenewright.loading import load_component, save_component
    from scenewright.training.shape_library import add_library

    grids, poses = _objects(9)
    codec = fit_codec(grids, poses, ShapeCodecConfig(grid_resolution=16, num_components=8, tokens=2, channels=8))
    save_component(codec, tmp_path / "plain")
    assert load_component(tmp_path / "plain").config.library_size == 0  # a codec from before libraries loads
    with_library = add_library(codec, codec.project(torch.from_numpy(grids)))
    save_component(with_library, tmp_path / "library")
    loaded = load_component(tmp_path / "library")
    assert loaded.config.library_size == 9
    assert torch.equal(loaded.library, with_library.library)


def test_the_library_holds_every_family_turned_and_mirrored_the_same_with_any_worker_count() -> None:
    from scenewright.data.shapes import FAMILIES
    from scenewright.training.shape_library import VARIANTS, _distinct, build_library, family_grids

    chair = family_grids(FAMILIES.index("chair"), 1, seed=5, resolution=16, truncation=0.1).reshape(VARIANTS, 16, 16, 16)
    for quarter in range(4):  # each quarter turn as it is, then mirrored through x
        assert np.array_equal(chair[2 * quarter + 1], chair[2 * quarter][::-1])
    assert not np.allclose(chair[0], chair[4], atol=0.05)  # a chair is not symmetric under a half turn
    # the grid turned a quarter is the grid of the chair's mesh turned a quarter (+90 degrees about +Z)
    rng = np.random.default_rng(0)
    mesh = make_shape("chair", rng).mesh.copy()
    mesh.apply_transform(trimesh.transformations.rotation_matrix(math.pi / 2, (0, 0, 1)))
    turned = sdf_grid(*_unit(mesh), 16, 0.1, rng)
    plain = make_shape("chair", np.random.default_rng(0)).mesh
    assert np.allclose(np.rot90(sdf_grid(*_unit(plain), 16, 0.1, rng), 1, axes=(0, 1)), turned, atol=0.02)

    grids, poses = _objects(20)
    codec = fit_codec(grids, poses, ShapeCodecConfig(grid_resolution=16, num_components=16, tokens=3, channels=8))
    one = build_library(codec, 1, seed=5, workers=1)
    two = build_library(codec, 1, seed=5, workers=2)
    assert torch.equal(one, two) and one.shape[1] == 16
    assert not torch.equal(one, build_library(codec, 1, seed=6, workers=1))
    # turns and mirror images that give the same shape are kept once: a box once; a chair (its own mirror image)
    # 3 times, facing the camera, away from it and sideways (a quarter turn either way, mirror images of each other)
    box = torch.from_numpy(family_grids(FAMILIES.index("box"), 1, seed=5, resolution=16, truncation=0.1))
    assert len(_distinct(codec.project(box), codec)) == 1
    assert len(_distinct(codec.project(torch.from_numpy(chair.reshape(VARIANTS, -1))), codec)) == 3
    assert len(FAMILIES) < len(one) < len(FAMILIES) * VARIANTS
