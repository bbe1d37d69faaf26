"""The default model's image conditions: MIDI's triple (instance RGB, scene RGB, mask), sized for a CPU.

Per instance the encoder sees
- the whole scene (RGB + the union of all masks) with the instance's own mask, full frame:
  where the object is and what is around it (supports, occluders);
- a square crop around the instance's mask (instance RGB on white, as MIDI splits an
  instance, + the mask): its shape at a usable resolution even when it is small;
- the crop's place and size in the frame and the mask's area: the position made explicit;
  with `mask_geometry`, also the mask's exact box and which of its sides may be cut (by the
  frame or another instance's mask: the object may go on unseen there, an amodal cue), so
  the row where an object meets its ground or support is a number, not a pixel to find.

With `coordinates` the scene trunk also sees two coordinate planes (CoordConv), and with
`camera_head` the encoder estimates the camera's pitch and field of view from the scene: a
training signal that teaches the trunk the perspective every pose depends on, and at
inference a prior for the placement's camera solve (`estimate_camera`).

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
from ..masks import mask_support, other_masks, outline_directions

BOX_FEATURES = 5  # crop centre x, y and side in [-1, 1] frame units, mask area (log), 1
# with mask_geometry: the mask box's left, top, right and bottom edges in [-1, 1] frame units, then for each of
# those sides 1 when it may be cut (the frame's border or another instance's mask next to it), else 0
MASK_GEOMETRY_FEATURES = 8
# the camera head's outputs are (pitch, fov) standardised by these centres and spreads (degrees): the
# procedural scenes' ranges (data.scenes.ELEVATION_DEG, FOV_DEG)
CAMERA_CENTRE_DEG = (27.5, 47.5)
CAMERA_SPREAD_DEG = (10.0, 7.5)


@dataclass
class ConditionEncoderConfig(ConfigMixin):
    working_size: int = 256  # the padded square image is resized to this first (training renders are this size)
    scene_size: int = 128
    crop_size: int = 64
    crop_margin: float = 1.15  # crop side / longer side of the mask's box
    width: int = 64  # channels of the 16 x 16 feature maps
    token_dim: int = 128
    global_dim: int = 128
    # off by default, so folders saved before these existed load as they were trained
    mask_geometry: bool = False  # the mask's exact box and its cut sides as numbers
    coordinates: bool = False  # two coordinate planes for the scene trunk (CoordConv)
    camera_head: bool = False  # estimate the camera's pitch and field of view from the scene

    @property
    def box_features(self) -> int:
        return BOX_FEATURES + (MASK_GEOMETRY_FEATURES if self.mask_geometry else 0)


@dataclass
class ConditionInputs:
    """Preprocessed tensors of one scene (what training shards store, as uint8)."""

    scene: np.ndarray  # (4, S, S) uint8: RGB + union of the masks
    masks: np.ndarray  # (N, S, S) uint8 0/255
    crops: np.ndarray  # (N, 4, C, C) uint8: instance RGB on white + mask
    boxes: np.ndarray  # (N, config.box_features) float32


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


def _working_frame(image: np.ndarray, masks: Sequence[np.ndarray], working_size: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The image and masks padded to a square and resized to the working size."""
    masks = [np.asarray(m, bool) for m in masks]
    image, masks = _square_pad(np.asarray(image, np.uint8)[..., :3], masks)
    return _resize(image, working_size), [_resize(m.astype(np.uint8) * 255, working_size) >= 128 for m in masks]


def _scene_input(image: np.ndarray, masks: Sequence[np.ndarray], scene_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Working-frame image and masks -> (4, S, S) uint8 RGB + the union of the masks, and the (N, S, S) masks."""
    scene_masks = np.stack([_resize(m.astype(np.uint8) * 255, scene_size) for m in masks])
    return np.concatenate([_resize(image, scene_size).transpose(2, 0, 1), scene_masks.max(axis=0)[None]]), scene_masks


def prepare_scene(image: np.ndarray, masks: Sequence[np.ndarray], working_size: int, scene_size: int) -> np.ndarray:
    """(H, W, 3) uint8 image + N boolean masks -> (4, S, S) uint8: RGB + the union of the masks, the scene input
    of `prepare_conditions`."""
    return _scene_input(*_working_frame(image, masks, working_size), scene_size)[0]


def prepare_conditions(image: np.ndarray, masks: Sequence[np.ndarray], config: ConditionEncoderConfig) -> ConditionInputs:
    """(H, W, 3) uint8 image + N boolean masks -> the encoder's inputs; training and inference share this."""
    image, masks = _working_frame(image, masks, config.working_size)
    work = config.working_size
    scene, scene_masks = _scene_input(image, masks, config.scene_size)
    crops, boxes = [], []
    others = other_masks(masks, masks) if config.mask_geometry else [None] * len(masks)
    for mask, other in zip(masks, others):
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
        features = [2.0 * cc / work - 1.0, 2.0 * cr / work - 1.0, 2.0 * side / work, float(np.log(area)) / 5.0, 1.0]
        if config.mask_geometry:
            features += _mask_geometry(mask, other)
        boxes.append(features)
    return ConditionInputs(scene, scene_masks, np.stack(crops), np.asarray(boxes, np.float32))


def _mask_geometry(mask: np.ndarray, others: np.ndarray) -> list[float]:
    """The MASK_GEOMETRY_FEATURES of one (non-empty) mask at the working size."""
    if not mask.any():
        return [0.0] * MASK_GEOMETRY_FEATURES
    # directions +column, +row, -column, -row: the right, bottom, left and top sides
    extent, cut = mask_support(mask, others, outline_directions(4))
    size = float(mask.shape[0])
    left, top, right, bottom = -extent[2], -extent[3], extent[0], extent[1]
    edges = [2.0 * v / size - 1.0 for v in (left, top, right, bottom)]
    return edges + [float(cut[k]) for k in (2, 3, 0, 1)]


def flip_conditions(scene: torch.Tensor, masks: torch.Tensor, crops: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The inputs of the image mirrored left-right (training augmentation; the latents mirror with them)."""
    boxes = boxes.clone()
    boxes[..., 0] = -boxes[..., 0]
    if boxes.shape[-1] == BOX_FEATURES + MASK_GEOMETRY_FEATURES:
        geometry = boxes[..., BOX_FEATURES:].clone()
        # left and right edges trade places and signs, as do their cut flags
        boxes[..., BOX_FEATURES + 0], boxes[..., BOX_FEATURES + 2] = -geometry[..., 2], -geometry[..., 0]
        boxes[..., BOX_FEATURES + 4], boxes[..., BOX_FEATURES + 6] = geometry[..., 6], geometry[..., 4]
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
    """Scene + masks + crops -> (global embedding (N, 1, global_dim), tokens (N, L, token_dim), and with a
    camera head the standardised (pitch, fov) of each scene (S, 2))."""

    def __init__(self, config: ConditionEncoderConfig):
        super().__init__()
        self.config = config
        w = config.width
        # scene: 128 -> 64 -> 32 -> 16
        self.scene_trunk = nn.Sequential(_down(6 if config.coordinates else 4, w // 2), _down(w // 2, w), _ResBlock(w),
                                         _down(w, w), _ResBlock(w))
        self.mask_stem = nn.Sequential(_down(1, w // 4), _down(w // 4, w // 2), nn.Conv2d(w // 2, w, 3, stride=2, padding=1))
        self.instance_blocks = nn.Sequential(_ResBlock(w), _ResBlock(w), _down(w, w))  # 16 -> 8
        # crop: 64 -> 32 -> 16 -> 8 -> 4
        self.crop_trunk = nn.Sequential(_down(4, w // 2), _down(w // 2, w), _ResBlock(w), _down(w, w), _ResBlock(w),
                                        _down(w, w))
        scene_tokens, crop_tokens = (config.scene_size // 16) ** 2, (config.crop_size // 16) ** 2
        self.scene_position = nn.Parameter(torch.randn(scene_tokens, w) * 0.02)
        self.crop_position = nn.Parameter(torch.randn(crop_tokens, w) * 0.02)
        self.box_mlp = nn.Sequential(nn.Linear(config.box_features, w), nn.SiLU(), nn.Linear(w, w))
        self.token_proj = nn.Linear(w, config.token_dim)
        self.global_proj = nn.Sequential(nn.Linear(3 * w, config.global_dim), nn.SiLU(),
                                         nn.Linear(config.global_dim, config.global_dim))
        # 16 x 16 scene features -> 8 x 8 -> (pitch, fov): perspective is read from where things are, so not pooled
        grid = config.scene_size // 16
        self.camera_head = nn.Sequential(_down(w, w), nn.Flatten(), nn.Linear(w * grid * grid, w), nn.SiLU(),
                                         nn.Linear(w, 2)) if config.camera_head else None

    @property
    def num_tokens(self) -> int:
        return len(self.scene_position) + len(self.crop_position) + 1

    def forward(self, scene: torch.Tensor, masks: torch.Tensor, crops: torch.Tensor, boxes: torch.Tensor,
                scene_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """scene (S, 4, s, s), masks (N, 1, s, s), crops (N, 4, c, c) in [0, 1]; boxes (N, box_features);
        scene_index (N,). The third output is None without a camera head."""
        dtype = self.token_proj.weight.dtype
        scene_features = self.scene_trunk(self._scene_input(scene.to(dtype)))
        camera = self.camera_head(scene_features) if self.camera_head is not None else None
        features = self.instance_blocks(scene_features[scene_index] + self.mask_stem(masks.to(dtype) * 2.0 - 1.0))
        scene_tokens = features.flatten(2).transpose(1, 2) + self.scene_position
        crop = self.crop_trunk(crops.to(dtype) * 2.0 - 1.0)
        crop_tokens = crop.flatten(2).transpose(1, 2) + self.crop_position
        box = self.box_mlp(boxes.to(dtype))
        tokens = self.token_proj(torch.cat([scene_tokens, crop_tokens, box[:, None]], dim=1))
        pooled = torch.cat([scene_tokens.mean(1), crop_tokens.mean(1), box], dim=-1)
        return self.global_proj(pooled)[:, None], tokens, camera

    def _scene_input(self, scene: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> [-1, 1], with the coordinate planes (column, row in [-1, 1]) when configured."""
        x = scene * 2.0 - 1.0
        if not self.config.coordinates:
            return x
        size = x.shape[-1]
        ramp = torch.linspace(-1.0, 1.0, size, dtype=x.dtype, device=x.device)
        planes = torch.stack([ramp[None, :].expand(size, size), ramp[:, None].expand(size, size)])
        return torch.cat([x, planes.expand(len(x), -1, -1, -1)], dim=1)

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
        emb1, emb2, _ = self._run(image, masks)
        return emb1, emb2

    @torch.no_grad()
    def estimate_camera(self, image: Image.Image, masks: Sequence[np.ndarray]) -> tuple[float, float] | None:
        """The camera head's (pitch, horizontal field of view) in degrees, None without a head."""
        if self.camera_head is None:
            return None
        _, _, camera = self._run(image, masks)
        return camera_degrees(camera[0])

    def _run(self, image: Image.Image, masks: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        inputs = prepare_conditions(np.asarray(image.convert("RGB")), masks, self.config)
        device = self.token_proj.weight.device
        tensors = inputs_to_tensors(inputs, device)
        return self(*tensors, torch.zeros(len(inputs.masks), dtype=torch.long, device=device))


def camera_targets(pitch_deg: torch.Tensor, fov_deg: torch.Tensor) -> torch.Tensor:
    """(S,) pitch and fov in degrees -> the camera head's standardised targets (S, 2)."""
    values = torch.stack([pitch_deg, fov_deg], dim=-1).float()
    return (values - torch.tensor(CAMERA_CENTRE_DEG)) / torch.tensor(CAMERA_SPREAD_DEG)


def camera_degrees(standardised: torch.Tensor) -> tuple[float, float]:
    """One scene's camera-head output (2,) -> (pitch, fov) in degrees."""
    pitch, fov = (standardised.float().cpu() * torch.tensor(CAMERA_SPREAD_DEG) + torch.tensor(CAMERA_CENTRE_DEG)).tolist()
    return pitch, fov


def inputs_to_tensors(inputs: ConditionInputs, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
    """uint8 arrays -> float tensors in [0, 1]: (scene (1, 4, s, s), masks (N, 1, s, s), crops, boxes)."""
    scale = 1.0 / 255.0
    scene = torch.from_numpy(inputs.scene).float()[None] * scale
    masks = torch.from_numpy(inputs.masks).float()[:, None] * scale
    crops = torch.from_numpy(inputs.crops).float() * scale
    return scene.to(device), masks.to(device), crops.to(device), torch.from_numpy(inputs.boxes).to(device)
