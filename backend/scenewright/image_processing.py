"""Scene image + instance masks -> the pixel tensors MIDI-3D's two image encoders read.

Reproduces transformers' CLIPImageProcessor / BitImageProcessor (the feature
extractors of the hub checkpoint) and MIDI-3D's conditioning recipe with PIL and
numpy, so the conditions match the reference to float32 rounding.

Input images of any size are accepted. Images with transparency are composited
on white before anything else (MIDI reads plain RGB; white is also the colour
MIDI paints outside an instance, so a transparent background reads as "empty").
Fully opaque RGBA gives exactly the same pixels as dropping the alpha channel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .config import ConfigMixin


@dataclass
class ImageProcessorConfig(ConfigMixin):
    """The preprocessor_config.json of a feature extractor (fields as transformers writes them)."""

    image_processor_type: str = "CLIPImageProcessor"
    do_convert_rgb: bool = True
    do_resize: bool = True
    size: dict[str, int] = field(default_factory=lambda: {"shortest_edge": 224})
    resample: int = 3  # PIL.Image.BICUBIC
    do_center_crop: bool = True
    crop_size: dict[str, int] = field(default_factory=lambda: {"height": 224, "width": 224})
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: list[float] = field(default_factory=lambda: [0.48145466, 0.4578275, 0.40821073])
    image_std: list[float] = field(default_factory=lambda: [0.26862954, 0.26130258, 0.27577711])

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "ImageProcessorConfig":
        """Known keys only; integer `size`/`crop_size` (older configs) become their dict forms."""
        data = dict(data or {})
        if isinstance(data.get("size"), int):
            data["size"] = {"shortest_edge": data["size"]}
        if isinstance(data.get("crop_size"), int):
            data["crop_size"] = {"height": data["crop_size"], "width": data["crop_size"]}
        return super().from_dict(data)


def to_rgb_image(image: Image.Image | np.ndarray) -> Image.Image:
    """Any PIL image or (H, W[, 3|4]) uint8 array -> RGB PIL image; transparency composited on white."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.ascontiguousarray(image).astype(np.uint8, copy=False))
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def resize_target(width: int, height: int, size: dict[str, int]) -> tuple[int, int]:
    """(width, height) after resize, with transformers' rounding for `shortest_edge`."""
    if "shortest_edge" in size:
        short, long = sorted((width, height))
        new_short, new_long = size["shortest_edge"], int(size["shortest_edge"] * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)
    if "height" in size and "width" in size:
        return size["width"], size["height"]
    raise ValueError(f"unsupported image processor size {size!r} (expected shortest_edge or height+width)")


def _preprocess_one(image: Image.Image, cfg: ImageProcessorConfig) -> np.ndarray:
    image = to_rgb_image(image)
    if cfg.do_resize:
        target = resize_target(*image.size, cfg.size)
        if target != image.size:
            image = image.resize(target, resample=Image.Resampling(cfg.resample))
    if cfg.do_center_crop:
        w, h = image.size
        cw, ch = cfg.crop_size["width"], cfg.crop_size["height"]
        left, top = (w - cw) // 2, (h - ch) // 2
        # PIL pads with zeros outside the image, which is what transformers does for small inputs.
        image = image.crop((left, top, left + cw, top + ch))
    pixels = np.asarray(image)
    if cfg.do_rescale:
        pixels = (pixels.astype(np.float64) * cfg.rescale_factor).astype(np.float32)
    else:
        pixels = pixels.astype(np.float32)
    if cfg.do_normalize:
        mean = np.asarray(cfg.image_mean, dtype=np.float32)
        std = np.asarray(cfg.image_std, dtype=np.float32)
        pixels = (pixels - mean) / std
    return pixels.transpose(2, 0, 1)


def preprocess(images: list[Image.Image], cfg: ImageProcessorConfig) -> torch.Tensor:
    """Images -> (B, 3, h, w) float32 pixel values, as the feature extractor would produce."""
    arrays = [_preprocess_one(im, cfg) for im in images]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"preprocessed images differ in size {sorted(shapes)}; enable center crop in the config")
    return torch.from_numpy(np.stack(arrays))


def _check_masks(size: tuple[int, int], masks: list[np.ndarray]) -> None:
    width, height = size
    if not masks:
        raise ValueError("at least one instance mask is needed")
    for i, mask in enumerate(masks):
        if mask.shape != (height, width):
            raise ValueError(f"mask {i} has shape {mask.shape}, the image is {height}x{width} (H x W)")


def split_instances(scene_rgb: Image.Image, masks: list[np.ndarray]) -> list[Image.Image]:
    """One image per instance: the scene's pixels inside its mask, white elsewhere (MIDI's split)."""
    scene = to_rgb_image(scene_rgb)
    _check_masks(scene.size, masks)
    pixels = np.asarray(scene)
    out = []
    for mask in masks:
        inst = np.full_like(pixels, 255)
        inst[mask] = pixels[mask]
        out.append(Image.fromarray(inst))
    return out


def build_conditions(
    scene_rgb: Image.Image | np.ndarray,
    masks: list[np.ndarray],
    fe1_cfg: ImageProcessorConfig,
    fe2_cfg: ImageProcessorConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scene + N boolean masks -> (CLIP pixels (N,3,h,w), DINO pixels (N,7,h,w)).

    DINO channels: feature_extractor_2 of the instance image (0-2), of the whole
    scene (3-5), and the raw 0/1 mask (6). As in the reference, the mask is
    resized with legacy nearest interpolation straight from the full image to
    the crop size, without the shortest-edge resize and centre crop the RGB
    channels get, so it is misaligned with them whenever the crop cuts; the
    released weights were trained with that input, so it is kept.
    """
    scene = to_rgb_image(scene_rgb)
    masks = [np.asarray(m, dtype=bool) for m in masks]
    instances = split_instances(scene, masks)
    clip_pixels = preprocess(instances, fe1_cfg)
    dino_instances = preprocess(instances, fe2_cfg)
    dino_scene = preprocess([scene], fe2_cfg).expand_as(dino_instances)
    mask = torch.from_numpy(np.stack(masks).astype(np.float32)).unsqueeze(1)
    mask = F.interpolate(mask, size=dino_instances.shape[-2:], mode="nearest")
    return clip_pixels, torch.cat([dino_instances, dino_scene, mask], dim=1)


def mask_colours(image: Image.Image, masks: list[np.ndarray]) -> list[tuple[float, float, float]]:
    """Per mask the mean sRGB colour (0..1) of the image's pixels under it, its one-pixel edge left out
    (edge pixels mix in the background); a mask too thin to keep anything uses all its pixels."""
    from scipy.ndimage import binary_erosion

    pixels = np.asarray(to_rgb_image(image), np.float64) / 255.0
    out = []
    for mask in masks:
        mask = np.asarray(mask, bool)
        core = binary_erosion(mask)
        chosen = core if core.any() else mask
        mean = pixels[chosen].mean(axis=0) if chosen.any() else np.full(3, 0.8)
        out.append((float(mean[0]), float(mean[1]), float(mean[2])))
    return out
