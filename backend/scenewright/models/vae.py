"""TripoSG vecset VAE: surface points -> latent token set -> signed field at any query point.

The decoder turns latents into a key/value token set once (`decoder_kv`) and then
answers point queries by cross-attention (`query`), so a mesher can evaluate as
many points as it likes, in chunks, against one cached token set. Decoded values
are NEGATIVE inside the shape (the reference multiplies its network output by -1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..config import ConfigMixin
from .attention import Attention, FeedForward, FP32LayerNorm


@dataclass
class TripoSGVAEConfig(ConfigMixin):
    """Fields of the hub `vae/config.json` (defaults = the reference constructor's)."""

    in_channels: int = 3
    latent_channels: int = 64
    num_attention_heads: int = 8
    width_encoder: int = 512
    width_decoder: int = 1024
    num_layers_encoder: int = 8
    num_layers_decoder: int = 16
    embedding_type: str = "frequency"
    embed_frequency: int = 8
    embed_include_pi: bool = False


class FrequencyEmbedding(nn.Module):
    """concat[x, sin(x_c 2^k), cos(x_c 2^k)], frequency index fastest within each coordinate.

    Always computed in float32: in bf16, coordinates times 2^7 would lose the
    precision a fine marching-cubes grid needs.
    """

    def __init__(self, num_freqs: int, input_dim: int, include_pi: bool):
        super().__init__()
        self.num_freqs = num_freqs
        self.include_pi = include_pi
        self.out_dim = input_dim * (2 * num_freqs + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        freqs = 2.0 ** torch.arange(self.num_freqs, dtype=torch.float32, device=x.device)
        if self.include_pi:
            freqs = freqs * torch.pi
        x = x.float()
        angles = (x[..., None] * freqs).view(*x.shape[:-1], -1)
        return torch.cat([x, angles.sin(), angles.cos()], dim=-1)


class VAEBlock(nn.Module):
    """Pre-norm transformer block: either self-attention or cross-attention (with a
    LayerNorm on the context), then feed-forward."""

    def __init__(self, dim: int, heads: int, cross: bool):
        super().__init__()
        if cross:
            self.norm2 = FP32LayerNorm(dim, eps=1e-5)
            self.attn2 = Attention(dim, heads, cross_attention_dim=dim, norm_cross=True)
        else:
            self.norm1 = FP32LayerNorm(dim, eps=1e-5)
            self.attn1 = Attention(dim, heads)
        self.norm3 = FP32LayerNorm(dim, eps=1e-5)
        self.ff = FeedForward(dim, 4 * dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is not None:
            x = x + self.attn2(self.norm2(x), context)
        else:
            x = x + self.attn1(self.norm1(x))
        return x + self.ff(self.norm3(x))


class TripoSGEncoder(nn.Module):
    """Query tokens (a subset of the surface) cross-attend to all surface points, then self-attend."""

    def __init__(self, in_channels: int, dim: int, heads: int, num_layers: int):
        super().__init__()
        self.proj_in = nn.Linear(in_channels, dim)
        self.blocks = nn.ModuleList(
            [VAEBlock(dim, heads, cross=True)] + [VAEBlock(dim, heads, cross=False) for _ in range(num_layers)]
        )
        self.norm_out = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x_q: torch.Tensor, x_kv: torch.Tensor) -> torch.Tensor:
        x = self.blocks[0](self.proj_in(x_q), self.proj_in(x_kv))
        for block in self.blocks[1:]:
            x = block(x)
        return self.norm_out(x)


class TripoSGDecoder(nn.Module):
    """Self-attention over latent tokens, then one cross-attention block for point queries."""

    def __init__(self, in_channels: int, dim: int, heads: int, num_layers: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            [VAEBlock(dim, heads, cross=False) for _ in range(num_layers)] + [VAEBlock(dim, heads, cross=True)]
        )
        self.proj_query = nn.Linear(in_channels, dim)
        self.norm_out = nn.LayerNorm(dim, eps=1e-5)
        self.proj_out = nn.Linear(dim, 1)


class TripoSGVAEModel(nn.Module):
    """Encoder (training data) and decoder (meshing) of the TripoSG shape latent space."""

    def __init__(self, config: TripoSGVAEConfig):
        super().__init__()
        if config.embedding_type != "frequency":
            raise ValueError(f"embedding_type {config.embedding_type!r} is not supported (only 'frequency')")
        self.config = config
        self.embedder = FrequencyEmbedding(config.embed_frequency, config.in_channels, config.embed_include_pi)
        heads = config.num_attention_heads
        self.encoder = TripoSGEncoder(
            config.in_channels + self.embedder.out_dim, config.width_encoder, heads, config.num_layers_encoder
        )
        self.decoder = TripoSGDecoder(self.embedder.out_dim, config.width_decoder, heads, config.num_layers_decoder)
        self.quant = nn.Linear(config.width_encoder, 2 * config.latent_channels)
        self.post_quant = nn.Linear(config.latent_channels, config.width_decoder)

    # --- decoding -------------------------------------------------------------------------

    def decoder_kv(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B,T,C), in any float dtype -> the token set every point query cross-attends to
        (B,T,width), in the decoder's dtype."""
        x = self.post_quant(latents.to(self.post_quant.weight.dtype))
        for block in self.decoder.blocks[:-1]:
            x = block(x)
        return x

    def query(self, kv: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Field values (B,P) at points (B,P,3) for a cached `decoder_kv`; negative = inside."""
        dec = self.decoder
        q = dec.proj_query(self.embedder(points.to(kv.device)).to(kv.dtype))
        x = dec.blocks[-1](q, kv)
        return -dec.proj_out(dec.norm_out(x)).squeeze(-1)

    def decode(self, latents: torch.Tensor, points: torch.Tensor, chunk_size: int = 50000) -> torch.Tensor:
        """Field values (B,P) at points (B,P,3), queried in chunks of `chunk_size` points."""
        kv = self.decoder_kv(latents)
        return torch.cat([self.query(kv, chunk) for chunk in points.split(chunk_size, dim=1)], dim=1)

    @torch.no_grad()
    def meshes(self, latents: torch.Tensor, resolution: int,
               check_cancel: Callable[[], None] | None = None) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """MIDI-3D's meshes of every latent at once (None: no surface): the reference's two-box recipe with its
        box filter and vertex mapping (`meshing.reference_extraction`), sampled coarse-to-fine.

        `check_cancel` runs before every chunk of decoder queries and raises to stop.
        """
        from ..meshing import reference_extraction

        kv = self.decoder_kv(latents)

        def field_fn(points: torch.Tensor) -> torch.Tensor:
            if check_cancel is not None:
                check_cancel()
            return self.query(kv, points.to(kv.device, torch.float32)).float()  # coordinates stay fp32

        extraction = reference_extraction(field_fn, latents.shape[0], resolution)
        return [None if m is None else (m.vertices, m.faces) for m in extraction.meshes]

    def smooth_gradient(self, gradient: torch.Tensor, latents: torch.Tensor, sigma: float) -> torch.Tensor:
        """A latent-space gradient averaged over each token's nearest tokens of its row (TIMI's eq. 5 for a
        token set): the r-th nearest token, by the distance between latent vectors, counts as r cells
        away, so the Gaussian of `sigma` cells spans the same few neighbours as on a grid (in a latent
        space of many dimensions distances themselves hardly tell near from far). A vecset token is a
        local surface code (the encoder queries farthest-point samples of the surface), so tokens near
        in latent space describe nearby, similar geometry; a token set has no other neighbourhood."""
        if sigma <= 0:
            return gradient
        tokens = latents.float()
        count = min(tokens.shape[1], math.ceil(3.0 * sigma) + 1)
        order = torch.cdist(tokens, tokens).topk(count, dim=-1, largest=False).indices  # (B, T, count), self first
        rank = torch.arange(count, dtype=torch.float32, device=tokens.device)
        weights = torch.exp(-0.5 * (rank / sigma) ** 2)
        weights = weights / weights.sum()
        grad = gradient.float()
        rows = torch.arange(grad.shape[0], device=grad.device)[:, None, None]
        neighbours = grad[rows, order]  # (B, T, count, C)
        return (neighbours * weights[:, None]).sum(dim=2).to(gradient.dtype)

    # --- encoding -------------------------------------------------------------------------

    def select_query_indices(self, surface: torch.Tensor, num_tokens: int, seed: int | None = None) -> torch.Tensor:
        """Indices (B, num_tokens) of the encoder's query points, as the reference picks them:
        a random choice of 4 * num_tokens points (shared by the batch), then farthest
        point sampling of a quarter of those (per row, starting at the first)."""
        num_points = surface.shape[1]
        pool = 4 * num_tokens
        choice = np.random.default_rng(seed).choice(num_points, pool, replace=pool > num_points)
        choice = torch.from_numpy(choice).to(surface.device)
        picked = farthest_point_sampling(surface[:, choice, :3], num_tokens)
        return choice[picked]

    def encode(
        self,
        surface: torch.Tensor,
        num_tokens: int = 2048,
        seed: int | None = None,
        query_indices: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Surface (B,S,6) xyz+normals -> posterior (mean, logvar) of shape (B, num_tokens, C).

        `query_indices` (B,K) or (K,) overrides the random + farthest-point choice of query points.
        """
        if query_indices is None:
            query_indices = self.select_query_indices(surface, num_tokens, seed)
        query_indices = query_indices.to(surface.device)
        if query_indices.ndim == 1:
            query_indices = query_indices.expand(surface.shape[0], -1)
        dtype = self.quant.weight.dtype
        features = torch.cat([self.embedder(surface[..., :3]), surface[..., 3:].float()], dim=-1).to(dtype)
        x_q = torch.gather(features, 1, query_indices[..., None].expand(-1, -1, features.shape[-1]))
        moments = self.quant(self.encoder(x_q, features))
        mean, logvar = moments.chunk(2, dim=-1)
        return mean, logvar.clamp(-30.0, 20.0)


def farthest_point_sampling(points: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B,k) of k mutually far points of each row of (B,P,3), starting at point 0.

    Plain iterative FPS (k small steps), batched over rows; ties go to the lowest index.
    """
    batch, num_points, _ = points.shape
    if not 0 < k <= num_points:
        raise ValueError(f"cannot pick {k} of {num_points} points")
    points = points.float()
    chosen = torch.zeros(batch, k, dtype=torch.long, device=points.device)
    dist = torch.full((batch, num_points), float("inf"), device=points.device)
    rows = torch.arange(batch, device=points.device)
    last = torch.zeros(batch, dtype=torch.long, device=points.device)
    for i in range(1, k):
        d = (points - points[rows, last][:, None]).pow(2).sum(-1)
        dist = torch.minimum(dist, d)
        last = dist.argmax(dim=1)
        chosen[:, i] = last
    return chosen
