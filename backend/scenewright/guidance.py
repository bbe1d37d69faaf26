"""Guidance of the sampler as objects (diffusers' guiders): classifier-free guidance and TIMI.

A guider sees each step through a `StepContext`. `ClassifierFreeGuidance` makes the
step's velocity (conditional and unconditional rows in one DiT call); `TimiGuidance`
(training-free instance guidance, ../shared/papers/TIMI.txt sections 4.1-4.2) moves the
latents before the prediction, along the gradient of an instance-separation loss on the
DiT's early cross-attention maps, smoothed and modulated (SGU).

    ISG   P = A M^T                                  (eq. 2)  attention mass of each latent token on each mask
          W_vk = A_v M_k / (sum_v' A_v' M_k + eps)   (eq. 3)
          L_sep = -sum_k sum_v W_vk log(P_vk + eps)  (eq. 4)
    SGU   g = K_sigma * dL/dz                        (eq. 5)  smoothing by the model's decoder (see below)
          lambda = alpha std(z) / (max|g| + eps)     (eq. 6)
          m = beta m + (1 - beta) lambda g; z <- z - m (eq. 7)

The latents of these models are token sets, not the 3D grid the paper smooths, so the
decoder supplies the smoothing (`smooth_gradient(gradient, latents, sigma)`): the shape
codec maps a gradient into its signed-distance grid, convolves it with a 3D Gaussian there and projects it back
(exactly eq. 5 on the field the latent stands for); MIDI-3D's vecset tokens are smoothed
over their nearest neighbours in latent space (docs/guidance.md says why).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from .models.attention import AttentionProbsProcessor, FusedAttentionProcessor
from .models.dit import AttentionLayout
from .protocol import TimiSettings

EPS = 1e-6


@dataclass
class StepContext:
    """What a guider may use at one sampler step."""

    transformer: Any
    timestep: torch.Tensor  # scalar, sigma * 1000
    step: int  # 0-based index of this step
    emb1: torch.Tensor  # conditional embeddings, one row per instance
    emb2: torch.Tensor | None
    layout: AttentionLayout
    dtype: torch.dtype
    num_instances: int  # instances of the scene (the rows but a scene-context model's scene row)

    def predict(self, latents: torch.Tensor, emb1: torch.Tensor, emb2: torch.Tensor | None,
                last_block: int | None = None) -> torch.Tensor:
        """The DiT's velocity for rows of latents (whole scenes: one or both CFG halves) and their embeddings;
        with `last_block`, only the blocks up to it run and their output comes back (TripoSGDiTModel.forward)."""
        timestep = self.timestep.to(latents.device).expand(latents.shape[0])
        return self.transformer(latents.to(self.dtype), timestep, emb1, emb2, num_instances=self.num_instances,
                                layout=self.layout, last_block=last_block).float()


class Guider(Protocol):
    needs_gradients: bool

    def update_latents(self, ctx: StepContext, latents: torch.Tensor) -> torch.Tensor: ...


class ClassifierFreeGuidance:
    """v = v_uncond + s (v_cond - v_uncond), both halves in one DiT call; the unconditional rows get
    exact zeros as conditions (MIDI). A scale of 1 or less is the conditional prediction alone."""

    needs_gradients = False

    def __init__(self, scale: float) -> None:
        self.scale = float(scale)

    def update_latents(self, ctx: StepContext, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def velocity(self, ctx: StepContext, latents: torch.Tensor) -> torch.Tensor:
        if self.scale <= 1.0:
            return ctx.predict(latents, ctx.emb1, ctx.emb2)
        emb1 = torch.cat([torch.zeros_like(ctx.emb1), ctx.emb1])
        emb2 = None if ctx.emb2 is None else torch.cat([torch.zeros_like(ctx.emb2), ctx.emb2])
        uncond, cond = ctx.predict(torch.cat([latents, latents]), emb1, emb2).chunk(2)
        return uncond + self.scale * (cond - uncond)


def separation_loss(probs: list[torch.Tensor], patch_index: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """TIMI's L_sep (eqs. 2-4) from cross-attention probabilities (rows, heads, 1 + tokens, keys) of some blocks.

    The first query is the DiT's time token, not a 3D token, and is left out; `patch_index` picks
    the keys that are image patches, `masks` (K, patches) says how much of each patch each
    instance's mask covers. Summed over instances and tokens (eq. 4), averaged over rows and blocks.
    """
    losses = []
    for p in probs:
        attention = p.mean(dim=1)[:, 1:, :][..., patch_index]  # (rows, tokens, patches), heads averaged
        share = attention @ masks.T  # P: (rows, tokens, K)
        weight = share / (share.sum(dim=1, keepdim=True) + EPS)  # W
        losses.append(-(weight * torch.log(share + EPS)).sum(dim=(1, 2)).mean())
    return torch.stack(losses).mean()


@dataclass
class TimiGuidance:
    """TIMI's ISG with SGU (or, with settings.sgu off, a fixed-step gradient descent, the paper's ablation).

    `patch_index`/`patch_masks` come from the model's conditioner (`patch_masks(masks)`), the
    smoothing from its decoder (`smooth_gradient`). Per guided step the loss
    before the update is kept in `losses` (for tests and the benchmark).
    """

    settings: TimiSettings
    patch_index: torch.Tensor
    patch_masks: torch.Tensor
    decoder: Any
    needs_gradients: bool = True
    # checkpoint the blocks of the gradient pass: None = on CUDA, where memory binds (MIDI-3D's size: 1.4 instead of
    # 1.7 GiB per instance); on a CPU the recomputation made the default model's TIMI half again as slow
    checkpoint_blocks: bool | None = None
    losses: list[float] = field(default_factory=list)
    _momentum: torch.Tensor | None = None
    _fixed_step: float | None = None

    def guided_blocks(self, transformer: Any) -> list[int]:
        return [b for b in range(len(transformer.blocks)) if b <= self.settings.layers and
                transformer.blocks[b].attn2_2 is not None]

    def update_latents(self, ctx: StepContext, latents: torch.Tensor) -> torch.Tensor:
        if ctx.step >= self.settings.steps:
            return latents
        blocks = self.guided_blocks(ctx.transformer)
        if not blocks:
            raise ValueError("TIMI reads the cross-attention to image tokens, which this model's blocks "
                             f"0..{self.settings.layers} do not have")
        gradient, loss = self._gradient(ctx, latents, blocks)
        self.losses.append(loss)
        settings = self.settings
        if not settings.sgu:
            if self._fixed_step is None:  # calibrated once, at the first guided step, then fixed
                self._fixed_step = settings.alpha * float(latents.std()) / (float(gradient.abs().max()) + EPS)
            return latents - self._fixed_step * gradient
        smoothed = self.decoder.smooth_gradient(gradient, latents, settings.sigma)
        scale = settings.alpha * float(latents.std()) / (float(smoothed.abs().max()) + EPS)
        delta = scale * smoothed
        self._momentum = delta if self._momentum is None else settings.momentum * self._momentum + (1 - settings.momentum) * delta
        return latents - self._momentum

    def _gradient(self, ctx: StepContext, latents: torch.Tensor, blocks: list[int]) -> tuple[torch.Tensor, float]:
        """dL_sep/dz through blocks 0..max(blocks) only, those blocks checkpointed as `checkpoint_blocks` says
        (docs/guidance.md)."""
        recorders = {b: AttentionProbsProcessor() for b in blocks}
        for b, recorder in recorders.items():
            ctx.transformer.blocks[b].attn2_2.processor = recorder
        was_checkpointing = ctx.transformer.gradient_checkpointing
        checkpoint = latents.device.type == "cuda" if self.checkpoint_blocks is None else self.checkpoint_blocks
        ctx.transformer.gradient_checkpointing = checkpoint
        try:
            with torch.enable_grad():
                z = latents.detach().float().requires_grad_(True)
                ctx.predict(z, ctx.emb1, ctx.emb2, last_block=max(blocks))  # the loss reads nothing later
                # probs[0]: this forward's; the backward pass's recomputation records its own after it
                probs = [recorders[b].probs[0] for b in blocks]
                loss = separation_loss(probs, self.patch_index.to(z.device),
                                       self.patch_masks.to(z.device, torch.float32))
                (gradient,) = torch.autograd.grad(loss, z)
        finally:
            ctx.transformer.gradient_checkpointing = was_checkpointing
            for b in blocks:
                ctx.transformer.blocks[b].attn2_2.processor = FusedAttentionProcessor()
        if not torch.isfinite(gradient).all():
            raise FloatingPointError("TIMI's separation gradient is not finite")
        return gradient, float(loss.detach())
