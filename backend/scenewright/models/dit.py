"""TripoSG-style DiT denoiser (the MIDI-3D transformer) in plain PyTorch.

A U-ViT over latent tokens: a prepended timestep token, long skips from the
first half of the blocks to the second (LIFO), self-attention with RMS qk-norm,
cross-attention to CLIP image embeddings and, for MIDI-3D, a parallel second
cross-attention to DINOv2 tokens. Which blocks' self-attention is
multi-instance (or scene-context) is an `AttentionLayout` passed with each call,
not a parameter and not state on the model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.utils.checkpoint
from torch import nn

from ..config import ConfigMixin
from .attention import Attention, FeedForward, FP32LayerNorm


@dataclass(frozen=True)
class AttentionLayout:
    """Which blocks' self-attention is multi-instance (or scene-context); the others are plain.

    `blocks` empty is K = 0: every instance is denoised on its own.
    """

    blocks: tuple[int, ...] = ()
    mode: str = "multi_instance"

    def mode_of(self, block: int) -> str:
        return self.mode if block in self.blocks else "plain"


PLAIN = AttentionLayout()


@dataclass
class TripoSGDiTConfig(ConfigMixin):
    """Fields of the hub `transformer/config.json` (defaults = the reference constructor's)."""

    num_attention_heads: int = 16
    width: int = 2048
    in_channels: int = 64
    num_layers: int = 21
    cross_attention_dim: int = 768
    # None: the single-cross-attention TripoSG variant (no attn2_2 / norm2_2)
    cross_attention_2_dim: int | None = None
    # a learned position per latent token, for latents whose tokens mean different things (the default
    # model's pose + shape layout); None: an unordered token set (TripoSG, MIDI-3D), no parameter
    latent_positions: int | None = None


def timestep_features(timestep: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features [sin(t f_k) ..., cos(t f_k) ...] in float32 (diffusers' Timesteps, no flip, no shift)."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timestep.device) / half
    angles = timestep[:, None].float() * torch.exp(exponent)[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class TimestepEmbedding(nn.Module):
    """Linear -> exact GELU -> Linear on the sinusoidal features; becomes the time token."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, hidden_dim)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class DiTBlock(nn.Module):
    """One DiT block: [long skip] -> self-attn -> parallel cross-attn(s) -> feed-forward."""

    def __init__(self, config: TripoSGDiTConfig, skip: bool):
        super().__init__()
        dim, heads = config.width, config.num_attention_heads
        self.norm1 = FP32LayerNorm(dim, eps=1e-5)
        self.attn1 = Attention(dim, heads, qk_norm=True)
        self.norm2 = FP32LayerNorm(dim, eps=1e-5)
        self.attn2 = Attention(dim, heads, cross_attention_dim=config.cross_attention_dim, qk_norm=True)
        if config.cross_attention_2_dim is not None:
            self.norm2_2 = FP32LayerNorm(dim, eps=1e-5)
            self.attn2_2 = Attention(dim, heads, cross_attention_dim=config.cross_attention_2_dim, qk_norm=True)
        else:
            self.norm2_2 = self.attn2_2 = None
        self.norm3 = FP32LayerNorm(dim, eps=1e-5)
        self.ff = FeedForward(dim, 4 * dim)
        if skip:
            # the reference applies skip_norm AFTER skip_linear; the weights were trained that way
            self.skip_linear = nn.Linear(2 * dim, dim)
            self.skip_norm = FP32LayerNorm(dim, eps=1e-5)
        else:
            self.skip_linear = self.skip_norm = None

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        context_2: torch.Tensor | None,
        skip: torch.Tensor | None,
        num_instances: int,
        mode: str = "plain",
    ) -> torch.Tensor:
        if self.skip_linear is not None:
            x = self.skip_norm(self.skip_linear(torch.cat([skip, x], dim=-1)))
        x = x + self.attn1(self.norm1(x), num_instances=num_instances, mode=mode)
        if self.attn2_2 is not None:
            if context_2 is None:
                raise ValueError("this model has a second cross-attention: pass encoder_hidden_states_2")
            x = x + self.attn2(self.norm2(x), context) + self.attn2_2(self.norm2_2(x), context_2)
        else:
            x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


def default_mi_blocks(num_layers: int, k: int = 5) -> list[int]:
    """The k blocks centred on the middle block (MIDI-3D uses 8..12 of 21).

    k is capped at num_layers - 2 so the first and last blocks stay plain
    (the tiny 5-block model gets 1..3, as in the reference goldens).
    """
    k = max(0, min(k, num_layers - 2))
    start = num_layers // 2 - k // 2
    return list(range(start, start + k))


class TripoSGDiTModel(nn.Module):
    """Velocity predictor v(x_sigma, t, image conditions) over (B, tokens, in_channels) latents."""

    def __init__(self, config: TripoSGDiTConfig):
        super().__init__()
        self.config = config
        width = config.width
        self.time_proj = TimestepEmbedding(width, 4 * width, width)
        self.proj_in = nn.Linear(config.in_channels, width)
        if config.latent_positions is not None:
            self.latent_position = nn.Parameter(torch.randn(config.latent_positions, width) * 0.02)
        else:
            self.latent_position = None
        self.blocks = nn.ModuleList(
            [DiTBlock(config, skip=i > config.num_layers // 2) for i in range(config.num_layers)]
        )
        self.norm_out = nn.LayerNorm(width, eps=1e-5)
        self.proj_out = nn.Linear(width, config.in_channels)
        # Under autograd, recompute each block's activations in the backward pass instead of keeping them
        # (diffusers' name): less memory for one more forward pass of the blocks.
        self.gradient_checkpointing = False

    def default_mi_blocks(self, k: int = 5) -> list[int]:
        """This model's `default_mi_blocks`."""
        return default_mi_blocks(self.config.num_layers, k)

    def layout(self, mi_blocks: Sequence[int], mode: str = "multi_instance") -> AttentionLayout:
        """The layout with `mode` self-attention in the listed blocks, checked against this model."""
        chosen = tuple(sorted(set(mi_blocks)))
        unknown = [b for b in chosen if not 0 <= b < len(self.blocks)]
        if unknown:
            raise ValueError(f"block indices {unknown} out of range 0..{len(self.blocks) - 1}")
        return AttentionLayout(chosen, mode)

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_2: torch.Tensor | None = None,
        num_instances: int = 1,
        layout: AttentionLayout = PLAIN,
        last_block: int | None = None,
    ) -> torch.Tensor:
        """hidden_states (B,T,Cin), timestep (B,) or scalar = sigma*1000 -> velocity (B,T,Cin).

        `num_instances` is the group size of the layout's multi-instance blocks: rows are
        grouped in consecutive runs of N (multi_instance) or N + 1 (scene_context).
        `last_block`: stop after that block and return its output (B, 1 + T, width) instead of the
        velocity. A guider that reads the first blocks' attention needs nothing after them, and
        under autograd the blocks not run keep no activations (TIMI: blocks 0..4 of 21).
        """
        batch, tokens = hidden_states.shape[:2]
        timestep = torch.as_tensor(timestep, device=hidden_states.device).reshape(-1).expand(batch)
        temb = timestep_features(timestep, self.config.width).to(hidden_states.dtype)
        temb = self.time_proj(temb).unsqueeze(1)
        tokens_in = self.proj_in(hidden_states)
        if self.latent_position is not None:
            if tokens != len(self.latent_position):
                raise ValueError(f"this model has {len(self.latent_position)} latent tokens, got {tokens}")
            tokens_in = tokens_in + self.latent_position.to(tokens_in.dtype)
        x = torch.cat([temb, tokens_in], dim=1)
        middle = self.config.num_layers // 2
        skips: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            skip = skips.pop() if i > middle else None
            args = (x, encoder_hidden_states, encoder_hidden_states_2, skip, num_instances, layout.mode_of(i))
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
            else:
                x = block(*args)
            if i == last_block:
                return x
            if i < middle:
                skips.append(x)
        x = self.norm_out(x)[:, -tokens:]
        return self.proj_out(x)
