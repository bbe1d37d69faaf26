"""A pose head: each instance's pose token regressed from the condition encoder's outputs.

Trained beside the DiT on the same encoder (`--pose-head-weight`), its loss
teaches the encoder the layout by plain regression, a signal the denoiser's
noisy targets blur. At inference its pose and the sampler's err differently, so
the pipeline averages them (`pose_head_blend` in model_index.json): the mean of
the two makes better boxes than either (docs/results.md, "What limits IoU-B").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import ConfigMixin


@dataclass
class PoseHeadConfig(ConfigMixin):
    global_dim: int = 128  # the condition encoder's global embedding (emb1)
    token_dim: int = 128  # its tokens (emb2), averaged per instance
    pose_channels: int = 8  # the latent's first token: the pose numbers
    width: int = 128
    layers: int = 2  # transformer layers over a scene's instances: the pose is in the scene's own frame
    # besides the tokens' mean, what emb1 finds among them (one attention query, 4 heads): where in the picture
    # the instance's evidence lies (off in folders saved before it existed)
    token_attention: bool = False


class PoseHead(nn.Module):
    """emb1 (R, 1, global_dim), emb2 (R, L, token_dim), R a multiple of the group size (a scene's instances)
    -> (R, pose_channels)."""

    def __init__(self, config: PoseHeadConfig):
        super().__init__()
        self.config = config
        width = config.width
        inputs = config.global_dim + config.token_dim
        if config.token_attention:
            self.query = nn.Linear(config.global_dim, config.token_dim)
            self.pool = nn.MultiheadAttention(config.token_dim, 4, batch_first=True)
            inputs += config.token_dim
        self.inputs = nn.Linear(inputs, width)
        layer = nn.TransformerEncoderLayer(width, 4, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.outputs = nn.Linear(width, config.pose_channels)

    def forward(self, emb1: torch.Tensor, emb2: torch.Tensor, group_size: int) -> torch.Tensor:
        dtype = self.inputs.weight.dtype
        parts = [emb1[:, 0].to(dtype), emb2.mean(dim=1).to(dtype)]
        if self.config.token_attention:
            tokens = emb2.to(dtype)
            parts.append(self.pool(self.query(emb1.to(dtype)), tokens, tokens)[0][:, 0])
        x = self.inputs(torch.cat(parts, dim=-1)).view(-1, group_size, self.config.width)
        return self.outputs(self.blocks(x)).reshape(-1, self.config.pose_channels)
