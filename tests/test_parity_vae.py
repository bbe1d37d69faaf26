"""TripoSGVAEModel (decoder values, kv cache, point embedding, encoder) against the MIDI-3D goldens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from scenewright.loading import load_component
from scenewright.models.vae import farthest_point_sampling

TOL = 1e-5


@pytest.fixture(scope="module")
def cases(golden_dir: Path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in load_file(golden_dir / "vae_cases.safetensors").items()}


@pytest.fixture(scope="module")
def vae(golden_dir: Path):
    return load_component(golden_dir / "tiny-midi-3d" / "vae")


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@torch.no_grad()
def test_decoder_intermediates(vae, cases):
    assert _max_diff(vae.post_quant(cases["latents"]), cases["post_quant"]) <= TOL
    assert _max_diff(vae.decoder_kv(cases["latents"]), cases["decoder_kv_cache"]) <= TOL
    assert _max_diff(vae.embedder(cases["points_random"][:, :16]), cases["embed_points_random_first16"]) <= TOL


@torch.no_grad()
@pytest.mark.parametrize(
    ("points", "expected", "chunk_size"),
    [
        ("points_random", "sdf_points_random", 50000),
        ("points_random", "sdf_points_random_chunked_100", 100),
        ("points_grid9", "sdf_points_grid9", 50000),
        ("grid_d4_points", "grid_d4_logits", 1000),
    ],
)
def test_decoded_values(vae, cases, points, expected, chunk_size):
    latents = cases["latents"]
    pts = cases[points]
    if pts.ndim == 2:  # one grid shared by the batch
        pts = pts.expand(latents.shape[0], -1, -1)
    values = vae.decode(latents, pts, chunk_size=chunk_size)
    assert _max_diff(values, cases[expected][..., 0]) <= TOL


@torch.no_grad()
def test_query_reuses_kv_cache(vae, cases):
    kv = vae.decoder_kv(cases["latents"])
    pts = cases["points_random"]
    values = torch.cat([vae.query(kv, pts[:, :123]), vae.query(kv, pts[:, 123:])], dim=1)
    assert _max_diff(values, cases["sdf_points_random"][..., 0]) <= TOL


@torch.no_grad()
def test_encoder_on_recorded_query_subset(vae, cases):
    mean, logvar = vae.encode(cases["encoder_surface"], query_indices=cases["encoder_query_indices"])
    assert _max_diff(mean, cases["encoder_posterior_mean"]) <= TOL
    assert _max_diff(logvar, cases["encoder_posterior_logvar_clamped"]) <= TOL
    moments = cases["encoder_moments"]
    latent = mean.shape[-1]
    assert _max_diff(mean, moments[..., :latent]) <= TOL
    assert _max_diff(logvar, moments[..., latent:].clamp(-30, 20)) <= TOL


@torch.no_grad()
def test_encoder_samples_its_own_queries(vae, cases):
    surface = cases["encoder_surface"]
    idx = vae.select_query_indices(surface, num_tokens=16, seed=7)
    assert idx.shape == (2, 16)
    assert all(len(set(row.tolist())) == 16 for row in idx)  # FPS never repeats a point
    assert torch.equal(idx, vae.select_query_indices(surface, num_tokens=16, seed=7))
    mean, logvar = vae.encode(surface, num_tokens=16, seed=7)
    expected_mean, expected_logvar = vae.encode(surface, query_indices=idx)
    assert mean.shape == (2, 16, vae.config.latent_channels)
    assert torch.equal(mean, expected_mean) and torch.equal(logvar, expected_logvar)


def test_farthest_point_sampling_is_greedy_max_min():
    points = torch.from_numpy(np.random.default_rng(0).normal(size=(3, 200, 3)).astype(np.float32))
    chosen = farthest_point_sampling(points, 20)
    assert (chosen[:, 0] == 0).all()
    for row, picks in zip(points.numpy().astype(np.float64), chosen.numpy()):
        for i in range(1, len(picks)):
            d = np.linalg.norm(row[:, None] - row[picks[:i]][None], axis=-1).min(axis=1)
            assert d[picks[i]] == pytest.approx(d.max(), rel=1e-5)
