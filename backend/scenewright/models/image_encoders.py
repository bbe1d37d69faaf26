"""The two image encoders of MIDI-3D in plain PyTorch: CLIP vision (with projection) and 7-channel DINOv2.

Parameter names follow transformers' CLIPVisionModelWithProjection and Dinov2Model
so that the hub checkpoint (image_encoder_1 / image_encoder_2) loads with strict
key matching; numerics follow transformers 4.49, the version the reference pins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigMixin


def _multi_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, T, D) projections -> (B, T, D) attention output with the standard per-head split."""
    b, t, d = q.shape
    q, k, v = (x.view(b, t, num_heads, d // num_heads).transpose(1, 2) for x in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b, t, d)


def _activation(name: str) -> nn.Module:
    if name == "quick_gelu":
        return _QuickGELU()
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"unsupported hidden_act {name!r} (expected 'quick_gelu' or 'gelu')")


class _QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the activation the original CLIP weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


# --------------------------------------------------------------------------- CLIP


@dataclass
class CLIPVisionConfig(ConfigMixin):
    """Fields of transformers' CLIPVisionConfig that change the computation (defaults: ViT-L/14)."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 14
    projection_dim: int = 768
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5


class CLIPVisionEmbeddings(nn.Module):
    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.num_positions = (config.image_size // config.patch_size) ** 2 + 1
        self.class_embedding = nn.Parameter(torch.zeros(config.hidden_size))
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, config.patch_size, stride=config.patch_size, bias=False
        )
        self.position_embedding = nn.Embedding(self.num_positions, config.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        weight = self.patch_embedding.weight
        patches = self.patch_embedding(pixel_values.to(weight.dtype)).flatten(2).transpose(1, 2)
        if patches.shape[1] + 1 != self.num_positions:
            raise ValueError(
                f"CLIP input of {tuple(pixel_values.shape[-2:])} pixels gives {patches.shape[1]} patches; "
                f"the model's position table holds {self.num_positions - 1} (resize with its feature extractor)"
            )
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight


class CLIPAttention(nn.Module):
    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _multi_head_attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.num_heads)
        return self.out_proj(out)


class CLIPMLP(nn.Module):
    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation_fn = _activation(config.hidden_act)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.self_attn = CLIPAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class CLIPVisionTransformer(nn.Module):
    """The `vision_model` part; returns (last_hidden_state, pooled CLS after post_layernorm)."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # sic, CLIP's name
        self.encoder = CLIPEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        last_hidden_state = self.encoder(self.pre_layrnorm(self.embeddings(pixel_values)))
        return last_hidden_state, self.post_layernorm(last_hidden_state[:, 0])


class CLIPVisionModelWithProjection(nn.Module):
    """CLIP image tower; MIDI uses `image_embeds` (one global token per instance) as cross-attention context 1."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.config = config
        self.vision_model = CLIPVisionTransformer(config)
        self.visual_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised pixels -> image_embeds (B, projection_dim)."""
        _, pooled = self.vision_model(pixel_values)
        return self.visual_projection(pooled)


# --------------------------------------------------------------------------- DINOv2


@dataclass
class Dinov2Config(ConfigMixin):
    """Fields of transformers' Dinov2Config that change the computation (defaults: DINOv2-L/14, 7 channels)."""

    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    mlp_ratio: int = 4
    num_channels: int = 7
    image_size: int = 518
    patch_size: int = 14
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    layerscale_value: float = 1.0
    qkv_bias: bool = True
    use_mask_token: bool = True
    use_swiglu_ffn: bool = False


class Dinov2PatchEmbeddings(nn.Module):
    def __init__(self, config: Dinov2Config):
        super().__init__()
        self.num_channels = config.num_channels
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, config.patch_size, stride=config.patch_size
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.shape[1] != self.num_channels:
            raise ValueError(
                f"DINOv2 expects {self.num_channels} input channels, got {pixel_values.shape[1]}"
            )
        return self.projection(pixel_values).flatten(2).transpose(1, 2)


class Dinov2Embeddings(nn.Module):
    def __init__(self, config: Dinov2Config):
        super().__init__()
        num_patches = (config.image_size // config.patch_size) ** 2
        self.patch_size = config.patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        if config.use_mask_token:  # only used for masked-image training, kept for key parity
            self.mask_token = nn.Parameter(torch.zeros(1, config.hidden_size))
        self.patch_embeddings = Dinov2PatchEmbeddings(config)
        self.position_embeddings = nn.Parameter(torch.zeros(1, num_patches + 1, config.hidden_size))

    def interpolate_pos_encoding(self, num_patches: int, height: int, width: int) -> torch.Tensor:
        """Bicubic resize of the square patch-position table to the input's patch grid (transformers 4.49)."""
        table = self.position_embeddings
        num_positions = table.shape[1] - 1
        if num_patches == num_positions and height == width:
            return table
        side = int(math.sqrt(num_positions))
        dim = table.shape[-1]
        patch_pos = table[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(
            patch_pos.float(),
            size=(height // self.patch_size, width // self.patch_size),
            mode="bicubic",
            align_corners=False,
        ).to(table.dtype)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat([table[:, :1], patch_pos], dim=1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = pixel_values.shape
        patches = self.patch_embeddings(pixel_values.to(self.patch_embeddings.projection.weight.dtype))
        tokens = torch.cat([self.cls_token.expand(batch, -1, -1), patches], dim=1)
        return tokens + self.interpolate_pos_encoding(patches.shape[1], height, width)


class Dinov2SelfAttention(nn.Module):
    def __init__(self, config: Dinov2Config):
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.query = nn.Linear(d, d, bias=config.qkv_bias)
        self.key = nn.Linear(d, d, bias=config.qkv_bias)
        self.value = nn.Linear(d, d, bias=config.qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _multi_head_attention(self.query(x), self.key(x), self.value(x), self.num_heads)


class Dinov2SelfOutput(nn.Module):
    def __init__(self, config: Dinov2Config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x)


class Dinov2Attention(nn.Module):
    def __init__(self, config: Dinov2Config):
        super().__init__()
        self.attention = Dinov2SelfAttention(config)
        self.output = Dinov2SelfOutput(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.attention(x))


class Dinov2LayerScale(nn.Module):
    def __init__(self, config: Dinov2Config):
        super().__init__()
        self.lambda1 = nn.Parameter(config.layerscale_value * torch.ones(config.hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.lambda1


class Dinov2MLP(nn.Module):
    def __init__(self, config: Dinov2Config):
        super().__init__()
        hidden = int(config.hidden_size * config.mlp_ratio)
        self.fc1 = nn.Linear(config.hidden_size, hidden)
        self.activation = _activation(config.hidden_act)
        self.fc2 = nn.Linear(hidden, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))


class Dinov2Layer(nn.Module):
    def __init__(self, config: Dinov2Config):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = Dinov2Attention(config)
        self.layer_scale1 = Dinov2LayerScale(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = Dinov2MLP(config)
        self.layer_scale2 = Dinov2LayerScale(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.layer_scale1(self.attention(self.norm1(x)))
        return x + self.layer_scale2(self.mlp(self.norm2(x)))


class Dinov2Encoder(nn.Module):
    def __init__(self, config: Dinov2Config):
        super().__init__()
        self.layer = nn.ModuleList(Dinov2Layer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x)
        return x


class Dinov2Model(nn.Module):
    """DINOv2 whose patch embedding reads MIDI's 7 channels (instance RGB, scene RGB, mask).

    Its whole token sequence (CLS + patches) is MIDI's cross-attention context 2.
    """

    def __init__(self, config: Dinov2Config):
        super().__init__()
        if config.use_swiglu_ffn:
            raise ValueError("Dinov2 with use_swiglu_ffn (the giant variant) is not supported")
        self.config = config
        self.embeddings = Dinov2Embeddings(config)
        self.encoder = Dinov2Encoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, num_channels, H, W) -> last_hidden_state (B, 1 + (H/14)(W/14), hidden_size)."""
        return self.layernorm(self.encoder(self.embeddings(pixel_values)))
