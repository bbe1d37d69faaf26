"""Instance masks from segmentation maps in MIDI-3D's convention.

MIDI-3D converts the segmentation image to 8-bit gray and treats every
distinct non-zero gray value as one instance, in ascending order; black is
background. Palette and RGB maps therefore work too (two colours with the same
gray value merge, exactly as in the reference).
"""

from __future__ import annotations

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
