"""The one attention module shared by the DiT and the VAE, plus its norms and feed-forward.

Parameter names follow the diffusers layout of the TripoSG/MIDI-3D checkpoints
(`to_q`, `to_k`, `to_v`, `to_out.0`, `norm_q`, `norm_k`, `norm_cross`,
`ff.net.0.proj`, `ff.net.2`) so hub weights load with strict key matching.

The arithmetic of attention is a swappable processor (diffusers' AttnProcessor idea):
`FusedAttentionProcessor` (scaled-dot-product attention, the default) or
`AttentionProbsProcessor`, which also records the attention probabilities, for
guidance that reads attention maps (TIMI). Which layout a self-attention uses is
an argument of each call, chosen by the caller (see `models.dit.AttentionLayout`).

Self-attention supports three layouts, all computed for the whole batch at once:

- ``"plain"``: every batch row attends to itself.
- ``"multi_instance"`` (MIDI-3D): consecutive groups of ``num_instances`` rows form
  one scene; each row's queries attend to the keys/values of every row of its
  group, concatenated along the token axis.
- ``"scene_context"`` (I-Scene): consecutive groups of ``num_instances + 1`` rows,
  ``num_instances`` instance rows followed by one scene row; an instance row's
  keys/values are its own followed by the scene row's, the scene row attends to
  itself only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_MODES = ("plain", "multi_instance", "scene_context")


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the model dtype (the reference's block norms)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class RMSNorm(nn.Module):
    """Per-head RMS norm of queries/keys; the variance is always taken in float32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # torch's fused kernel: the same numbers, one pass instead of five
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        variance = x.float().pow(2).mean(-1, keepdim=True)
        normed = (x.float() * torch.rsqrt(variance + self.eps)).to(x.dtype)
        return normed * self.weight.to(x.dtype)


class GELUProjection(nn.Module):
    """Linear followed by exact (erf) GELU: the first half of the feed-forward."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x))


class FeedForward(nn.Module):
    """Linear -> GELU -> Linear, laid out as diffusers' `net.0.proj` / `net.2`."""

    def __init__(self, dim: int, inner_dim: int | None = None):
        super().__init__()
        inner_dim = inner_dim or 4 * dim
        # index 1 is diffusers' (inference-time no-op) dropout; kept so index 2 matches the weights
        self.net = nn.ModuleList([GELUProjection(dim, inner_dim), nn.Identity(), nn.Linear(inner_dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class FusedAttentionProcessor:
    """Scaled-dot-product attention (fused kernels, no T x T matrix kept) in every layout."""

    def __call__(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mode: str,
                 num_instances: int) -> torch.Tensor:
        if mode == "multi_instance":
            return _multi_instance_attention(query, key, value, num_instances)
        if mode == "scene_context":
            return _scene_context_attention(query, key, value, num_instances)
        return F.scaled_dot_product_attention(query, key, value)


class AttentionProbsProcessor:
    """Explicit softmax(q k^T / sqrt(d)) v for plain (cross-)attention, keeping the probabilities
    (B, heads, T_q, T_k) in `probs` with autograd intact: what a guider differentiates."""

    def __init__(self) -> None:
        self.probs: list[torch.Tensor] = []

    def __call__(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mode: str,
                 num_instances: int) -> torch.Tensor:
        if mode != "plain":
            raise ValueError("attention probabilities are recorded for plain (cross-)attention only")
        scores = (query.float() @ key.float().transpose(-1, -2)) / (query.shape[-1] ** 0.5)
        probs = scores.softmax(dim=-1)
        self.probs.append(probs)
        return (probs @ value.float()).to(value.dtype)


class Attention(nn.Module):
    """Multi-head attention with the TripoSG q|k|v re-split and optional RMS qk-norm.

    The pre-trained weights expect the projections to be concatenated and
    re-split per head ([q|k|v] viewed as (heads, 3*head_dim) for self-attention,
    [k|v] as (heads, 2*head_dim) for cross-attention), so head h's query mixes
    channels of to_q, to_k and to_v. Reproducing that is what makes the hub
    weights mean what they were trained to mean.
    """

    def __init__(
        self,
        query_dim: int,
        heads: int,
        cross_attention_dim: int | None = None,
        qk_norm: bool = False,
        norm_cross: bool = False,
        qkv_bias: bool = False,
    ):
        super().__init__()
        if query_dim % heads:
            raise ValueError(f"query_dim {query_dim} is not divisible by heads {heads}")
        self.heads = heads
        self.is_cross_attention = cross_attention_dim is not None
        kv_dim = cross_attention_dim if cross_attention_dim is not None else query_dim
        head_dim = query_dim // heads
        self.processor: FusedAttentionProcessor | AttentionProbsProcessor = FusedAttentionProcessor()
        self.to_q = nn.Linear(query_dim, query_dim, bias=qkv_bias)
        self.to_k = nn.Linear(kv_dim, query_dim, bias=qkv_bias)
        self.to_v = nn.Linear(kv_dim, query_dim, bias=qkv_bias)
        self.to_out = nn.ModuleList([nn.Linear(query_dim, query_dim, bias=True)])
        self.norm_q = RMSNorm(head_dim, eps=1e-6) if qk_norm else None
        self.norm_k = RMSNorm(head_dim, eps=1e-6) if qk_norm else None
        self.norm_cross = nn.LayerNorm(kv_dim, eps=1e-5) if norm_cross else None

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        num_instances: int = 1,
        mode: str = "plain",
    ) -> torch.Tensor:
        """`mode` is the self-attention layout (see the module docstring); cross-attention is always plain."""
        if mode not in ATTENTION_MODES:
            raise ValueError(f"unknown attention mode {mode!r}; expected one of {ATTENTION_MODES}")
        if mode != "plain" and self.is_cross_attention:
            raise ValueError("multi-instance layouts apply to self-attention only")
        batch, tokens, _ = hidden_states.shape
        if self.is_cross_attention:
            query = self.to_q(hidden_states)
            context = encoder_hidden_states
            if self.norm_cross is not None:
                context = self.norm_cross(context)
            kv = F.linear(context, *_stacked(self.to_k, self.to_v))  # the [k|v] the re-split needs, one product
            kv = kv.view(batch, -1, self.heads, kv.shape[-1] // self.heads)
            key, value = kv.chunk(2, dim=-1)
            query = query.view(batch, tokens, self.heads, -1)
        else:
            # one projection by the stacked weights: the [q|k|v] the re-split needs, without concatenating outputs
            qkv = F.linear(hidden_states, *_stacked(self.to_q, self.to_k, self.to_v))
            qkv = qkv.view(batch, tokens, self.heads, qkv.shape[-1] // self.heads)
            query, key, value = qkv.chunk(3, dim=-1)
        query, key, value = (t.transpose(1, 2) for t in (query, key, value))  # (B, H, T, d)
        if self.norm_q is not None:
            query = self.norm_q(query)
            key = self.norm_k(key)
        out = self.processor(query, key, value, mode, num_instances)
        out = out.transpose(1, 2).reshape(batch, tokens, -1)
        return self.to_out[0](out)


def _stacked(*projections: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weights (and biases) of projections of the same input stacked: one matrix product computes them all."""
    bias = torch.cat([p.bias for p in projections]) if projections[0].bias is not None else None
    return torch.cat([p.weight for p in projections]), bias


def _group(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, H, T, d) -> (B/size, size, H, T, d), checking that the batch splits into groups."""
    if size < 1 or x.shape[0] % size:
        raise ValueError(f"batch of {x.shape[0]} rows does not split into groups of {size}")
    return x.view(x.shape[0] // size, size, *x.shape[1:])


def _multi_instance_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n: int) -> torch.Tensor:
    """MIDI attention: fold each group's instances into the token axis, attend, unfold.

    Every query of a group sees the same concatenated keys/values, so folding the
    queries too is exactly the reference's per-row attention, without repeating K/V.
    """
    groups, _, heads, tokens, dim = _group(q, n).shape

    def fold(x: torch.Tensor) -> torch.Tensor:
        return _group(x, n).transpose(1, 2).reshape(groups, heads, n * tokens, dim)

    out = F.scaled_dot_product_attention(fold(q), fold(k), fold(v))
    return out.view(groups, heads, n, tokens, dim).transpose(1, 2).reshape(q.shape)


def _scene_context_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n: int) -> torch.Tensor:
    """I-Scene attention: instance rows see [own K/V, scene K/V]; the scene row sees itself."""
    qg, kg, vg = (_group(x, n + 1) for x in (q, k, v))
    groups, _, heads, tokens, dim = qg.shape

    def with_scene(x: torch.Tensor) -> torch.Tensor:
        scene = x[:, n:].expand(-1, n, -1, -1, -1)
        return torch.cat([x[:, :n], scene], dim=3).reshape(groups * n, heads, 2 * tokens, dim)

    inst_q = qg[:, :n].reshape(groups * n, heads, tokens, dim)
    inst = F.scaled_dot_product_attention(inst_q, with_scene(kg), with_scene(vg))
    scene = F.scaled_dot_product_attention(qg[:, n], kg[:, n], vg[:, n])
    out = torch.cat([inst.view(groups, n, heads, tokens, dim), scene.unsqueeze(1)], dim=1)
    return out.reshape(q.shape)
