"""Training data: the normalised view frame, VAE examples, DiT shards that rebuild the encoders' exact inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from scenewright.evaluation.cases import list_cases, load_case
from scenewright.image_processing import build_conditions
from scenewright.models.presets import feature_extractor_configs
from scenewright.training import data as D

SMALL = D.SampleConfig(surface_points=512, near_points=512, uniform_points=256, dit_surface_points=256)


def test_normalization_round_trips_and_fills_the_box() -> None:
    meshes = D.scene_view_meshes(13)
    norm = D.SceneNormalization.fit([v for v, _ in meshes])
    normalised = [norm.apply(v) for v, _ in meshes]
    union = np.concatenate(normalised)
    low, high = union.min(0), union.max(0)
    assert np.allclose((low + high) / 2, 0.0, atol=1e-12)
    assert np.isclose((high - low).max(), 2 * D.SCENE_HALF_EXTENT)
    for (original, _), moved in zip(meshes, normalised):
        assert np.abs(norm.invert(moved) - original).max() < 1e-6
    # relative placement survives: the same offsets between instances, up to the one scale
    offset = meshes[1][0].mean(0) - meshes[0][0].mean(0)
    assert np.allclose(normalised[1].mean(0) - normalised[0].mean(0), offset * norm.scale)


def test_scene_view_meshes_are_in_the_view_frame() -> None:
    """+Z up: objects on the ground have their lowest point at height 0; the rotation keeps sizes."""
    from scenewright.data.scenes import sample_scene

    scene = sample_scene(5)
    meshes = D.scene_view_meshes(5)
    for obj, (vertices, _) in zip(scene.objects, meshes):
        if obj.support is None:
            assert abs(vertices[:, 2].min()) < 1e-9
        assert np.isclose(np.linalg.norm(vertices - vertices.mean(0), axis=1).max(),
                          np.linalg.norm(obj.world_mesh().vertices - obj.world_mesh().vertices.mean(0), axis=1).max())


def test_vae_examples_carry_signed_distances() -> None:
    # the first scene with convex objects: for those, "inside" is "behind every face plane", an independent test
    seed = next(s for s in range(100) if any(m.is_convex for m in D.normalized_scene(D.scene_view_meshes(s))[0]))
    examples = D.vae_examples(seed, SMALL)
    meshes, _ = D.normalized_scene(D.scene_view_meshes(seed))
    assert examples["surface"].shape == (len(meshes), 512, 6) and examples["surface"].dtype == np.float16
    assert examples["points"].shape == (len(meshes), 768, 3) and examples["sdf"].shape == (len(meshes), 768)
    for mesh, points, sdf, surface in zip(meshes, examples["points"], examples["sdf"].astype(np.float64), examples["surface"]):
        if not mesh.is_convex:
            continue
        assert ((sdf < 0) == _inside_convex(mesh, points)).mean() > 0.99
        # magnitudes: exact point-to-triangle distances, up to the dense samples' spacing
        exact = _surface_distance(mesh, points[:64].astype(np.float64))
        assert np.abs(np.abs(sdf[:64]) - exact).max() < 0.01
        # surface normals point outwards: a small step along them leaves the shape
        surface = surface.astype(np.float64)
        assert not _inside_convex(mesh, surface[:, :3] + 0.01 * surface[:, 3:]).any()
    assert 0.05 < (examples["sdf"] < 0).mean() < 0.95  # near-surface queries straddle the surface


def _inside_convex(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    normals = np.asarray(mesh.face_normals)
    offsets = (normals * np.asarray(mesh.triangles)[:, 0]).sum(-1)
    return (np.asarray(points, dtype=np.float64) @ normals.T - offsets <= 0).all(axis=1)


def _surface_distance(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """Exact distance of each point to the nearest triangle (brute force over all pairs)."""
    tris = np.repeat(np.asarray(mesh.triangles)[None], len(points), axis=0).reshape(-1, 3, 3)
    pairs = np.repeat(points, len(mesh.faces), axis=0)
    closest = trimesh.triangles.closest_point(tris, pairs)
    return np.linalg.norm(closest - pairs, axis=1).reshape(len(points), -1).min(axis=1)


def test_dit_shard_rebuilds_the_encoder_inputs_exactly(case_dir, tmp_path) -> None:
    fe1, fe2 = feature_extractor_configs(56)
    case_path = list_cases(case_dir)[0]
    example = D.dit_example(case_path, fe1, fe2, SMALL)
    D.write_shard(tmp_path / "dit-00000.npz", [example, example], {"kind": "dit"})
    shard = D.load_shards(tmp_path, "dit")
    case = load_case(case_path)
    masks = [case.seg == inst.id for inst in case.instances]
    clip_ref, dino_ref = build_conditions(Image.open(case.image_path), masks, fe1, fe2)
    for scene in (0, 1):
        clip, dino = D.conditions(shard, scene, fe1, fe2)
        torch.testing.assert_close(clip, clip_ref, rtol=0, atol=1e-6)
        torch.testing.assert_close(dino, dino_ref, rtol=0, atol=1e-6)
    # surfaces are the GT meshes in the normalised view frame
    meshes, _ = D.normalized_scene([inst.mesh for inst in case.instances])
    surface = shard["surface"][D.scene_rows(shard, 1)].astype(np.float64)
    for mesh, points in zip(meshes, surface):
        assert _surface_distance(mesh, points[:64, :3]).max() < 2e-3  # float16 storage


def test_shards_are_listed_in_order_and_missing_ones_are_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="vae-data"):
        D.shard_paths(tmp_path, "vae")


def test_vae_data_command_writes_resumable_shards(tmp_path) -> None:
    from scenewright.training.train import main

    assert main(["--stage", "vae-data", "--out", str(tmp_path), "--seeds", "5:7", "--shard-size", "1"]) == 0
    paths = D.shard_paths(tmp_path, "vae")
    assert [p.name for p in paths] == ["vae-00000.npz", "vae-00001.npz"]
    assert D.shard_meta(paths[1])["seeds"] == [6, 7]
    shard = D.read_shard(paths[0])
    assert len(shard["surface"]) == len(D.scene_view_meshes(5))
    np.testing.assert_array_equal(shard["points"], D.vae_examples(5, D.SampleConfig())["points"])  # deterministic
    written = paths[0].stat().st_mtime_ns
    assert main(["--stage", "vae-data", "--out", str(tmp_path), "--seeds", "5:8", "--shard-size", "1"]) == 0
    assert paths[0].stat().st_mtime_ns == written and len(D.shard_paths(tmp_path, "vae")) == 3
