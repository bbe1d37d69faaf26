"""Instance masks from segmentation maps in MIDI-3D's convention.

MIDI-3D converts the segmentation image to 8-bit gray and treats every
distinct non-zero gray value as one instance, in ascending order; black is
background. Palette and RGB maps therefore work too (two colours with the same
gray value merge, exactly as in the reference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image


class MaskError(ValueError):
    """The segmentation input cannot give instances; the message says what to fix."""


@dataclass
class InstanceMask:
    id: int  # the gray value of the instance in the seg map
    mask: np.ndarray  # (H, W) bool


def seg_to_gray(seg: Image.Image | np.ndarray) -> np.ndarray:
    """Any seg image (L, P, RGB, RGBA, I;16 label maps) -> (H, W) uint8 gray, as MIDI's reader does."""
    if isinstance(seg, np.ndarray):
        if seg.ndim == 2 and seg.dtype == np.uint8:
            return seg
        if seg.ndim == 2:
            if seg.min() < 0 or seg.max() > 255:
                raise MaskError("a label map must hold values 0..255 (0 = background)")
            return seg.astype(np.uint8)
        seg = Image.fromarray(seg.astype(np.uint8))
    if seg.mode in ("I", "I;16", "I;16B", "F"):
        return seg_to_gray(np.asarray(seg))
    if seg.mode == "RGBA":
        seg = seg.convert("RGB")
    return np.asarray(seg.convert("L"))


def instances_from_seg(seg: Image.Image | np.ndarray) -> list[InstanceMask]:
    """Split a seg map into instance masks, ordered by ascending gray value."""
    gray = seg_to_gray(seg)
    ids = [int(v) for v in np.unique(gray) if v != 0]
    return [InstanceMask(id=i, mask=gray == i) for i in ids]


def outline_directions(count: int) -> np.ndarray:
    """`count` unit 2D directions evenly spread over the circle, starting at +column."""
    angles = np.arange(count) * (2.0 * math.pi / count)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def mask_support(mask: np.ndarray, others: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mask's support function along `directions` (pixel squares, not centres), and which sides may be cut.

    A side is cut (open) when the mask's extreme pixels in that direction lie
    on the image border, or when another instance's mask comes within 2 px of
    the mask near that extreme: the object may continue there unseen.
    """
    height, width = mask.shape
    rows, cols = np.nonzero(mask)
    centres = np.stack([cols + 0.5, rows + 0.5], axis=1)
    half = 0.5 * np.abs(directions).sum(axis=1)
    heights = centres @ directions.T
    extent = heights.max(axis=0) + half
    on_border = (cols == 0) | (rows == 0) | (cols == width - 1) | (rows == height - 1)
    open_sides = np.array([on_border[heights[:, k] >= extent[k] - half[k] - 1.5].any() for k in range(len(directions))])
    near = np.zeros_like(mask)
    pad = np.pad(mask, 2)
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            near |= pad[2 + dy : 2 + dy + height, 2 + dx : 2 + dx + width]
    touch_rows, touch_cols = np.nonzero(near & others)
    if len(touch_rows):
        touch = np.stack([touch_cols + 0.5, touch_rows + 0.5], axis=1) @ directions.T
        open_sides |= touch.max(axis=0) >= extent - half - 3.0
    return extent, open_sides


def other_masks(masks: list[np.ndarray], all_masks: list[np.ndarray]) -> list[np.ndarray]:
    """For each fitted mask, the pixels of every other instance (fitted or not): where it may be occluded."""
    counts = np.sum(all_masks, axis=0)
    return [counts - m > 0 for m in masks]
