"""Mesh extraction: coarse-to-fine equals dense on an analytic scene with far fewer queries; reference parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from scenewright.bench.extraction import analytic_scene_field, chamfer_distance
from scenewright.meshing import (
    box_smooth,
    dense_grid_points,
    extract_meshes,
    extract_meshes_dense,
    grid_to_mesh,
    progressive_bbox,
)

BOX = 2.01  # edge of the default [-1.005, 1.005]^3 box


def _compare_with_dense(resolution: int, min_ratio: float) -> None:
    calls: list[tuple[int, ...]] = []

    def field(points: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(points.shape))
        return analytic_scene_field(points)

    dense = extract_meshes_dense(analytic_scene_field, 3, resolution)
    fast = extract_meshes(field, 3, resolution)
    print(f"\n{resolution}^3: dense {dense.num_queries:,} queries, coarse-to-fine {fast.num_queries:,} "
          f"({dense.num_queries / fast.num_queries:.1f}x fewer) in {fast.num_calls} calls")
    assert dense.num_queries == 3 * (resolution + 1) ** 3
    assert fast.num_queries == sum(shape[0] * shape[1] for shape in calls)
    assert all(shape[0] == 3 and shape[2] == 3 for shape in calls)  # every row in every call
    assert dense.num_queries >= min_ratio * fast.num_queries
    for d, f in zip(dense.meshes, fast.meshes):
        assert d is not None and f is not None
        assert chamfer_distance(d, f) < 1e-3 * BOX
        np.testing.assert_array_equal(f.vertices, d.vertices)
        np.testing.assert_array_equal(f.faces, d.faces)


def test_coarse_to_fine_equals_dense_128():
    _compare_with_dense(128, min_ratio=5.0)


@pytest.mark.slow
def test_coarse_to_fine_equals_dense_256_with_8x_fewer_queries():
    _compare_with_dense(256, min_ratio=8.0)


def test_256_uses_8x_fewer_queries_than_dense_and_closes_every_surface():
    """Every run checks the 256^3 query budget against the dense count; equality with dense is the slow test."""
    import trimesh

    result = extract_meshes(analytic_scene_field, 3, 256)
    dense_queries = 3 * 257**3
    print(f"\n256^3: dense {dense_queries:,} queries, coarse-to-fine {result.num_queries:,} "
          f"({dense_queries / result.num_queries:.1f}x fewer)")
    assert dense_queries >= 8 * result.num_queries
    meshes = [trimesh.Trimesh(m.vertices, m.faces) for m in result.meshes]
    assert all(mesh.is_watertight for mesh in meshes)  # a skipped patch of surface would leave a hole
    box, torus = meshes[1].volume, meshes[2].volume
    assert abs(box - 1.4 * 0.7 * 1.0) < 0.01 * box
    assert abs(torus - 2 * np.pi**2 * 0.6 * 0.12**2) < 0.01 * torus


def test_vertices_lie_on_the_analytic_surface():
    resolution = 64
    result = extract_meshes(analytic_scene_field, 3, resolution)
    half_voxel = 0.5 * BOX / resolution
    for row, mesh in enumerate(result.meshes):
        assert mesh is not None and mesh.vertices.dtype == np.float32 and mesh.faces.dtype == np.int32
        points = torch.from_numpy(mesh.vertices)[None].expand(3, -1, -1)
        distance = analytic_scene_field(points)[row].abs()
        assert float(distance.max()) < half_voxel
        import trimesh

        assert trimesh.Trimesh(mesh.vertices, mesh.faces).volume > 0  # outward-facing triangles


def test_small_part_between_coarse_samples_is_found():
    """A sphere of radius 0.02 fits between the coarse (32^3) samples; the distance band still finds it."""

    def field(points: torch.Tensor) -> torch.Tensor:
        return (points - points.new_tensor([0.13, -0.21, 0.4])).norm(dim=-1) - 0.02

    dense = extract_meshes_dense(field, 1, 128)
    fast = extract_meshes(field, 1, 128)
    assert dense.meshes[0] is not None and fast.meshes[0] is not None
    np.testing.assert_array_equal(fast.meshes[0].vertices, dense.meshes[0].vertices)
    assert fast.num_queries * 20 < dense.num_queries


def test_steeper_field_refines_the_same_band():
    """The band is measured with the field's slope, so 25 x the distance refines the same cells."""
    plain = extract_meshes(analytic_scene_field, 3, 64, coarse_resolution=16)
    steep = extract_meshes(lambda p: 25.0 * analytic_scene_field(p), 3, 64, coarse_resolution=16)
    assert steep.num_queries == plain.num_queries
    for a, b in zip(plain.meshes, steep.meshes):
        np.testing.assert_array_equal(a.faces, b.faces)
        np.testing.assert_allclose(a.vertices, b.vertices, atol=1e-6)


def test_random_decoder_field_equals_dense():
    """A random-weight VAE decoder (golden-replica size) is far from a distance field; still the dense mesh."""
    from scenewright.models.presets import build_components

    vae = build_components("tiny", seed=0)["vae"]
    latents = torch.randn(2, 64, vae.config.latent_channels, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        kv = vae.decoder_kv(latents)
        probe = torch.rand(2, 4096, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1
        vae.decoder.proj_out.bias += torch.quantile(vae.query(kv, probe).flatten(), 0.05)  # ~5% inside

        def field(points: torch.Tensor) -> torch.Tensor:
            return vae.query(kv, points)

        dense = extract_meshes_dense(field, 2, 32)
        fast = extract_meshes(field, 2, 32, coarse_resolution=8)
    for d, f in zip(dense.meshes, fast.meshes):
        assert d is not None
        np.testing.assert_array_equal(f.faces, d.faces)
        np.testing.assert_array_equal(f.vertices, d.vertices)


def test_field_without_surface_gives_none_from_the_coarse_grid_only():
    for sign in (1.0, -1.0):
        result = extract_meshes(lambda p: torch.full(p.shape[:2], sign), 2, 128, coarse_resolution=16)
        assert result.meshes == [None, None]
        assert result.num_queries == 2 * 17**3


def test_chunking_and_rows_do_not_change_the_result():
    whole = extract_meshes(analytic_scene_field, 3, 32, coarse_resolution=8)
    chunked = extract_meshes(analytic_scene_field, 3, 32, coarse_resolution=8, chunk_size=777)
    assert chunked.num_calls > whole.num_calls
    for a, b in zip(whole.meshes, chunked.meshes):
        np.testing.assert_array_equal(a.vertices, b.vertices)
        np.testing.assert_array_equal(a.faces, b.faces)


def test_resolution_must_be_coarse_times_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        extract_meshes(analytic_scene_field, 1, 96, coarse_resolution=32)


# ---- parity with the reference extraction path (goldens) -----------------------------------


@pytest.fixture(scope="module")
def vae_case(golden_dir):
    return load_file(str(golden_dir / "vae_cases.safetensors"))


def test_dense_grid_points_match_reference(vae_case):
    points = dense_grid_points((-1.005,) * 3, (1.005,) * 3, 16)
    assert points.dtype == np.float32
    np.testing.assert_array_equal(points, vae_case["grid_d4_points"])


def test_progressive_bbox_matches_reference(vae_case):
    for row in range(2):
        low, high = progressive_bbox(vae_case["grid_d4_points"], vae_case["grid_d4_logits"][row],
                                     (-1.005,) * 3, (1.005,) * 3)
        np.testing.assert_array_equal(low, vae_case["progressive_d4_bbox_min"][row])
        np.testing.assert_array_equal(high, vae_case["progressive_d4_bbox_max"][row])


def test_box_smooth_matches_reference(vae_case):
    logits = torch.from_numpy(vae_case["progressive_d4_logits"]).reshape(2, 17, 17, 17)
    # summed axis by axis, not by the reference's conv3d: equal within float32 rounding
    np.testing.assert_allclose(box_smooth(logits).numpy(), vae_case["progressive_d4_smoothed"], rtol=0, atol=1e-6)


def test_marching_cubes_and_reference_vertex_mapping_match_reference(vae_case):
    grid = vae_case["progressive_d4_smoothed"][0]
    in_index_space = grid_to_mesh(grid, (0.0,) * 3, (16.0,) * 3)
    np.testing.assert_array_equal(in_index_space.vertices, vae_case["mc_batch0_vertices_index_space"])
    np.testing.assert_array_equal(in_index_space.faces, vae_case["mc_batch0_faces"])
    low, high = vae_case["progressive_d4_bbox_min"][0], vae_case["progressive_d4_bbox_max"][0]
    reference = grid_to_mesh(grid, low, high, reference_vertex_mapping=True)
    np.testing.assert_array_equal(reference.vertices, vae_case["mc_batch0_vertices"])
    ours = grid_to_mesh(grid, low, high)  # index i at low + i * size / 16: 17/16 of the reference's extent
    np.testing.assert_allclose(ours.vertices - low, (reference.vertices - low) * 17 / 16, atol=1e-5)


# ---- the reference's mesh recipe (two boxes, box filter, vertex mapping) on the product path --


def test_midi_decoder_gives_the_reference_mesh(golden_dir, vae_case):
    """TripoSGVAEModel.meshes (what ScenePipeline.decode calls for MIDI-3D models) on the golden latents gives
    the mesh run_midi made from them: two-box pass, 3x3x3 box filter, marching cubes, its vertex mapping."""
    from scenewright.loading import load_component

    vae = load_component(golden_dir / "tiny-midi-3d" / "vae")
    meshes = vae.meshes(torch.from_numpy(vae_case["latents"]), resolution=16)
    vertices, faces = meshes[0]
    np.testing.assert_array_equal(faces, vae_case["mc_batch0_faces"])
    np.testing.assert_allclose(vertices, vae_case["mc_batch0_vertices"], atol=1e-5)


@pytest.mark.parametrize("resolution", [64, 128])
def test_reference_recipe_coarse_to_fine_equals_dense(resolution):
    from scenewright.meshing import reference_extraction

    dense = reference_extraction(analytic_scene_field, 3, resolution, dense=True)
    fast = reference_extraction(analytic_scene_field, 3, resolution)
    assert dense.num_queries == 2 * 3 * (resolution + 1) ** 3
    for d, f, db, fb in zip(dense.meshes, fast.meshes, dense.boxes, fast.boxes):
        np.testing.assert_array_equal(db[0], fb[0])  # the same second-pass boxes
        np.testing.assert_array_equal(f.faces, d.faces)
        np.testing.assert_array_equal(f.vertices, d.vertices)
    print(f"\nreference recipe at {resolution}^3: dense {dense.num_queries:,}, coarse-to-fine {fast.num_queries:,} "
          f"({dense.num_queries / fast.num_queries:.1f}x fewer)")


@pytest.mark.slow
def test_reference_recipe_at_256_equals_dense_with_8x_fewer_queries():
    from scenewright.meshing import reference_extraction

    dense = reference_extraction(analytic_scene_field, 3, 256, dense=True)
    fast = reference_extraction(analytic_scene_field, 3, 256)
    for d, f in zip(dense.meshes, fast.meshes):
        np.testing.assert_array_equal(f.faces, d.faces)
        np.testing.assert_array_equal(f.vertices, d.vertices)
    assert dense.num_queries >= 8 * fast.num_queries
