"""The default model's image conditions: MIDI's triple (instance RGB, scene RGB, mask), sized for a CPU.

Per instance the encoder sees
- the whole scene (RGB + the union of all masks) with the instance's own mask, full frame:
  where the object is and what is around it (supports, occluders);
- a square crop around the instance's mask (instance RGB on white, as MIDI splits an
  instance, + the mask): its shape at a usable resolution even when it is small;
- the crop's place and size in the frame and the mask's area: the position made explicit.

The scene trunk runs once per scene; the instance mask is added to its features, so N
instances cost one scene pass plus N light branches. Output: one global embedding
(N, 1, global_dim) and condition tokens (N, L, token_dim) for the DiT's two
cross-attentions, as MIDI-3D's CLIP and DINOv2 embeddings are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..config import ConfigMixin

BOX_FEATURES = 5  # crop centre x, y and side in [-1, 1] frame units, mask area (log), 1


@dataclass
class ConditionEncoderConfig(ConfigMixin):
    working_size: int = 256  # the padded square image is resized to this first (training renders are this size)
    scene_size: int = 128
    crop_size: int = 64
    crop_margin: float = 1.15  # crop side / longer side of the mask's box
    width: int = 64  # channels of the 16 x 16 feature maps
    token_dim: int = 128
    global_dim: int = 128


@dataclass
class ConditionInputs:
    """Preprocessed tensors of one scene (what training shards store, as uint8)."""

    scene: np.ndarray  # (4, S, S) uint8: RGB + union of the masks
    masks: np.ndarray  # (N, S, S) uint8 0/255
    crops: np.ndarray  # (N, 4, C, C) uint8: instance RGB on white + mask
    boxes: np.ndarray  # (N, BOX_FEATURES) float32


def _square_pad(image: np.ndarray, masks: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Pad to a square with the median background colour; the frame keeps its centre (cameras fit the long side)."""
    height, width = image.shape[:2]
    if height == width:
        return image, masks
    union = np.any(np.stack(masks), axis=0)
    background = np.median(image[~union], axis=0) if (~union).any() else np.full(3, 255.0)
    padded = _pad(image, np.asarray(background, np.uint8))
    return padded, [_pad(mask, False) for mask in masks]


def _pad(array: np.ndarray, fill: np.ndarray | bool) -> np.ndarray:
    height, width = array.shape[:2]
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    out = np.empty((side, side, *array.shape[2:]), array.dtype)
    out[:] = fill
    out[top : top + height, left : left + width] = array
    return out


def _resize(array: np.ndarray, size: int) -> np.ndarray:
    """Area-average resize of an (H, W[, 3]) uint8 image to size x size."""
    image = Image.fromarray(array)
    if image.size == (size, size):
        return array
    return np.asarray(image.resize((size, size), Image.Resampling.BOX if image.width >= size else Image.Resampling.BILINEAR))


def prepare_conditions(image: np.ndarray, masks: Sequence[np.ndarray], config: ConditionEncoderConfig) -> ConditionInputs:
    """(H, W, 3) uint8 image + N boolean masks -> the encoder's inputs; training and inference share this."""
    masks = [np.asarray(m, bool) for m in masks]
    image, masks = _square_pad(np.asarray(image, np.uint8)[..., :3], masks)
    work = config.working_size
    image = _resize(image, work)
    masks = [_resize(m.astype(np.uint8) * 255, work) >= 128 for m in masks]
    scene_rgb = _resize(image, config.scene_size)
    scene_masks = np.stack([_resize(m.astype(np.uint8) * 255, config.scene_size) for m in masks])
    union = scene_masks.max(axis=0)
    crops, boxes = [], []
    for mask in masks:
        rows, cols = np.nonzero(mask)
        if len(rows) == 0:
            rows, cols = np.array([work // 2]), np.array([work // 2])
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        side = max(int(np.ceil(max(r1 - r0, c1 - c0) * config.crop_margin)) + 2, 4)
        cr, cc = (r0 + r1) / 2.0, (c0 + c1) / 2.0
        top, left = int(round(cr - side / 2.0)), int(round(cc - side / 2.0))
        instance = np.full((side, side, 3), 255, np.uint8)
        crop_mask = np.zeros((side, side), np.uint8)
        # the window may leave the frame: copy the part inside it
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + side, work), min(left + side, work)
        window = mask[y0:y1, x0:x1]
        patch = instance[y0 - top : y1 - top, x0 - left : x1 - left]
        patch[window] = image[y0:y1, x0:x1][window]
        crop_mask[y0 - top : y1 - top, x0 - left : x1 - left] = window.astype(np.uint8) * 255
        size = config.crop_size
        crops.append(np.concatenate([_resize(instance, size).transpose(2, 0, 1), _resize(crop_mask, size)[None]]))
        area = max(float(mask.mean()), 1.0 / work**2)
        boxes.append([2.0 * cc / work - 1.0, 2.0 * cr / work - 1.0, 2.0 * side / work, float(np.log(area)) / 5.0, 1.0])
    scene = np.concatenate([scene_rgb.transpose(2, 0, 1), union[None]])
    return ConditionInputs(scene, scene_masks, np.stack(crops), np.asarray(boxes, np.float32))


def flip_conditions(scene: torch.Tensor, masks: torch.Tensor, crops: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The inputs of the image mirrored left-right (training augmentation; the latents mirror with them)."""
    boxes = boxes.clone()
    boxes[..., 0] = -boxes[..., 0]
    return scene.flip(-1), masks.flip(-1), crops.flip(-1), boxes


class _ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(8, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(8, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(8, cout), nn.SiLU())


class BlockoutConditionEncoder(nn.Module):
    """Scene + masks + crops -> (global embedding (N, 1, global_dim), tokens (N, L, token_dim))."""

    def __init__(self, config: ConditionEncoderConfig):
        super().__init__()
        self.config = config
        w = config.width
        # scene: 128 -> 64 -> 32 -> 16
        self.scene_trunk = nn.Sequential(_down(4, w // 2), _down(w // 2, w), _ResBlock(w), _down(w, w), _ResBlock(w))
        self.mask_stem = nn.Sequential(_down(1, w // 4), _down(w // 4, w // 2), nn.Conv2d(w // 2, w, 3, stride=2, padding=1))
        self.instance_blocks = nn.Sequential(_ResBlock(w), _ResBlock(w), _down(w, w))  # 16 -> 8
        # crop: 64 -> 32 -> 16 -> 8 -> 4
        self.crop_trunk = nn.Sequential(_down(4, w // 2), _down(w // 2, w), _ResBlock(w), _down(w, w), _ResBlock(w),
                                        _down(w, w))
        scene_tokens, crop_tokens = (config.scene_size // 16) ** 2, (config.crop_size // 16) ** 2
        self.scene_position = nn.Parameter(torch.randn(scene_tokens, w) * 0.02)
        self.crop_position = nn.Parameter(torch.randn(crop_tokens, w) * 0.02)
        self.box_mlp = nn.Sequential(nn.Linear(BOX_FEATURES, w), nn.SiLU(), nn.Linear(w, w))
        self.token_proj = nn.Linear(w, config.token_dim)
        self.global_proj = nn.Sequential(nn.Linear(3 * w, config.global_dim), nn.SiLU(),
                                         nn.Linear(config.global_dim, config.global_dim))

    @property
    def num_tokens(self) -> int:
        return len(self.scene_position) + len(self.crop_position) + 1

    def forward(self, scene: torch.Tensor, masks: torch.Tensor, crops: torch.Tensor, boxes: torch.Tensor,
                scene_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """scene (S, 4, s, s), masks (N, 1, s, s), crops (N, 4, c, c) in [0, 1]; boxes (N, 5); scene_index (N,)."""
        dtype = self.token_proj.weight.dtype
        features = self.scene_trunk(scene.to(dtype) * 2.0 - 1.0)[scene_index]
        features = self.instance_blocks(features + self.mask_stem(masks.to(dtype) * 2.0 - 1.0))
        scene_tokens = features.flatten(2).transpose(1, 2) + self.scene_position
        crop = self.crop_trunk(crops.to(dtype) * 2.0 - 1.0)
        crop_tokens = crop.flatten(2).transpose(1, 2) + self.crop_position
        box = self.box_mlp(boxes.to(dtype))
        tokens = self.token_proj(torch.cat([scene_tokens, crop_tokens, box[:, None]], dim=1))
        pooled = torch.cat([scene_tokens.mean(1), crop_tokens.mean(1), box], dim=-1)
        return self.global_proj(pooled)[:, None], tokens

    def patch_masks(self, masks: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Which condition tokens are patches of the full frame (the scene tokens, a grid over the padded
        square image) and the share of each patch that each mask covers."""
        grid = self.config.scene_size // 16
        coverage = []
        for mask in masks:
            square = _pad(np.asarray(mask, bool), False).astype(np.uint8) * 255
            cells = np.asarray(Image.fromarray(square).resize((grid, grid), Image.Resampling.BOX), np.float32) / 255.0
            coverage.append(cells.reshape(-1))
        return torch.arange(grid * grid), torch.from_numpy(np.stack(coverage))

    @torch.no_grad()
    def encode(self, image: Image.Image, masks: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """A scene image and its instance masks -> the DiT's conditions (the pipeline's interface)."""
        inputs = prepare_conditions(np.asarray(image.convert("RGB")), masks, self.config)
        device = self.token_proj.weight.device
        tensors = inputs_to_tensors(inputs, device)
        return self(*tensors, torch.zeros(len(inputs.masks), dtype=torch.long, device=device))


def inputs_to_tensors(inputs: ConditionInputs, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
    """uint8 arrays -> float tensors in [0, 1]: (scene (1, 4, s, s), masks (N, 1, s, s), crops, boxes)."""
    scale = 1.0 / 255.0
    scene = torch.from_numpy(inputs.scene).float()[None] * scale
    masks = torch.from_numpy(inputs.masks).float()[:, None] * scale
    crops = torch.from_numpy(inputs.crops).float() * scale
    return scene.to(device), masks.to(device), crops.to(device), torch.from_numpy(inputs.boxes).to(device)
