"""Multi-instance and scene-context attention are batched and mean what they say; every
layout runs on a randomly initialised DiT in float32 and bfloat16."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scenewright.models.attention import Attention
from scenewright.models.dit import TripoSGDiTConfig, TripoSGDiTModel
from scenewright.models.vae import TripoSGVAEConfig, TripoSGVAEModel


def _reference_self_attention(attn: Attention, x: torch.Tensor, kv_rows: list[list[int]]) -> np.ndarray:
    """Row r attends over the tokens of rows kv_rows[r] (concatenated), written out in float64
    with explicit softmax: the TripoSG [q|k|v] per-head re-split, RMS qk-norm, then to_out."""
    w = {name: p.detach().double().numpy() for name, p in attn.named_parameters()}
    xs = x.detach().double().numpy()
    heads = attn.heads
    batch, tokens, dim = xs.shape
    d = dim // heads

    def rms(t: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return t / np.sqrt((t**2).mean(-1, keepdims=True) + 1e-6) * weight

    qkv = np.concatenate([xs @ w["to_q.weight"].T, xs @ w["to_k.weight"].T, xs @ w["to_v.weight"].T], axis=-1)
    qkv = qkv.reshape(batch, tokens, heads, 3 * d)
    q, k, v = qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]
    q, k = rms(q, w["norm_q.weight"]), rms(k, w["norm_k.weight"])
    out = np.zeros((batch, tokens, heads, d))
    for r in range(batch):
        keys = np.concatenate([k[j] for j in kv_rows[r]], axis=0)  # (L, H, d)
        values = np.concatenate([v[j] for j in kv_rows[r]], axis=0)
        for h in range(heads):
            scores = q[r, :, h] @ keys[:, h].T / np.sqrt(d)
            p = np.exp(scores - scores.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            out[r, :, h] = p @ values[:, h]
    return out.reshape(batch, tokens, dim) @ w["to_out.0.weight"].T + w["to_out.0.bias"]


@pytest.fixture()
def attn() -> Attention:
    torch.manual_seed(0)
    module = Attention(32, heads=4, qk_norm=True)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))  # norm weights away from 1
    return module


def _run(attn: Attention, x: torch.Tensor, mode: str, n: int) -> np.ndarray:
    with torch.no_grad():
        return attn(x, num_instances=n, mode=mode).double().numpy()


def test_plain_matches_reference(attn):
    x = torch.randn(3, 7, 32)
    expected = _reference_self_attention(attn, x, [[0], [1], [2]])
    np.testing.assert_allclose(_run(attn, x, "plain", 1), expected, atol=1e-5)


def test_multi_instance_sees_its_scene_only(attn):
    x = torch.randn(6, 7, 32)  # two scenes (e.g. the CFG halves) of 3 instances
    groups = [[0, 1, 2]] * 3 + [[3, 4, 5]] * 3
    expected = _reference_self_attention(attn, x, groups)
    np.testing.assert_allclose(_run(attn, x, "multi_instance", 3), expected, atol=1e-5)


def test_multi_instance_with_one_instance_is_plain(attn):
    x = torch.randn(4, 7, 32)
    np.testing.assert_allclose(_run(attn, x, "multi_instance", 1), _run(attn, x, "plain", 1), atol=1e-6)


def test_scene_context_instances_see_themselves_and_the_scene(attn):
    x = torch.randn(6, 7, 32)  # two groups: 2 instance rows then 1 scene row
    kv_rows = [[0, 2], [1, 2], [2], [3, 5], [4, 5], [5]]
    expected = _reference_self_attention(attn, x, kv_rows)
    np.testing.assert_allclose(_run(attn, x, "scene_context", 2), expected, atol=1e-5)


def test_batch_must_split_into_groups(attn):
    with pytest.raises(ValueError, match="groups of 3"):
        _run(attn, torch.randn(4, 5, 32), "multi_instance", 3)
    with pytest.raises(ValueError, match="unknown attention mode"):
        _run(attn, torch.randn(4, 5, 32), "sideways", 1)


def _tiny_dit(cross_2: int | None) -> TripoSGDiTModel:
    torch.manual_seed(0)
    config = TripoSGDiTConfig(
        num_attention_heads=2, width=32, in_channels=4, num_layers=5, cross_attention_dim=16,
        cross_attention_2_dim=cross_2,
    )
    return TripoSGDiTModel(config).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("mode", "n", "batch"), [("plain", 1, 4), ("multi_instance", 2, 4), ("scene_context", 2, 6)])
def test_random_dit_runs_every_layout(mode, n, batch, dtype):
    model = _tiny_dit(cross_2=24)
    layout = model.layout(model.default_mi_blocks(3), mode=mode)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 10, 4, generator=g)
    t = torch.full((batch,), 750.0)
    ctx, ctx2 = torch.randn(batch, 1, 16, generator=g), torch.randn(batch, 5, 24, generator=g)
    with torch.no_grad():
        reference = model(x, t, ctx, ctx2, num_instances=n, layout=layout)
        model.to(dtype)
        out = model(x.to(dtype), t, ctx.to(dtype), ctx2.to(dtype), num_instances=n, layout=layout)
    assert out.shape == x.shape and out.dtype == dtype
    assert torch.isfinite(out).all()
    # bf16 keeps the fp32 answer's shape: norms and softmax statistics stay in float32
    assert (out.float() - reference).abs().max() <= 0.1 * reference.abs().max()


def test_single_cross_attention_variant():
    model = _tiny_dit(cross_2=None)
    assert model.blocks[0].attn2_2 is None
    assert not any("attn2_2" in k or "norm2_2" in k for k in model.state_dict())
    x, ctx = torch.randn(2, 10, 4), torch.randn(2, 3, 16)
    with torch.no_grad():
        out = model(x, torch.tensor([1000.0, 250.0]), ctx)
        # a scalar timestep is shared by the batch, as the sampling loop passes it
        assert torch.equal(model(x, torch.tensor(250.0), ctx), model(x, torch.tensor([250.0, 250.0]), ctx))
    assert torch.isfinite(out).all()


def test_random_vae_decodes_in_bf16():
    torch.manual_seed(0)
    config = TripoSGVAEConfig(latent_channels=4, num_attention_heads=2, width_encoder=16, width_decoder=16,
                              num_layers_encoder=1, num_layers_decoder=1)
    vae = TripoSGVAEModel(config).eval().to(torch.bfloat16)
    with torch.no_grad():
        values = vae.decode(torch.randn(2, 8, 4, dtype=torch.bfloat16), torch.rand(2, 100, 3) * 2 - 1, chunk_size=30)
        mean, logvar = vae.encode(torch.randn(2, 64, 6), num_tokens=8, seed=0)
    assert values.shape == (2, 100) and torch.isfinite(values).all()
    assert mean.shape == logvar.shape == (2, 8, 4) and torch.isfinite(mean).all()
