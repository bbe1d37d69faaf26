"""Instance masks made in Blender: a blank seg image to paint, and automatic masks.

The seg image follows MIDI-3D's convention (backend/scenewright/masks.py): black
is background and every distinct gray value is one instance. Automatic masks
only work for a plain background: the colour of the image border, flooded from
the border, is background; every remaining connected blob is an instance.
"""

from __future__ import annotations

import bpy
import numpy as np

from . import protocol
from .images import InputError, array_to_image, float_to_uint8, image_to_array, image_to_float


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of a (H, W) bool mask -> (labels int32, count), labels 1..count in raster order.

    Run-length union-find: Python work grows with the number of runs, not pixels.
    """
    height, width = mask.shape
    padded = np.zeros((height, width + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    rows_s, starts = np.nonzero(edges == 1)
    _, ends = np.nonzero(edges == -1)  # same row order as the starts, one end per start
    parent = list(range(len(starts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    row_first = np.searchsorted(rows_s, np.arange(height + 1))
    for row in range(1, height):
        a, a_end = row_first[row - 1], row_first[row]
        b, b_end = row_first[row], row_first[row + 1]
        while a < a_end and b < b_end:
            if starts[a] < ends[b] and starts[b] < ends[a]:  # runs overlap in a column
                ra, rb = find(a), find(b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
            if ends[a] < ends[b]:
                a += 1
            else:
                b += 1
    labels = np.zeros((height, width), dtype=np.int32)
    numbering: dict[int, int] = {}
    for run in range(len(starts)):
        root = find(run)
        label = numbering.setdefault(root, len(numbering) + 1)
        labels[rows_s[run], starts[run]:ends[run]] = label
    return labels, len(numbering)


def auto_seg(rgb: np.ndarray, tolerance: int = 16, min_fraction: float = 0.0005) -> np.ndarray:
    """(H, W, 3|4) uint8 on a plain background -> (H, W) uint8 seg map, instances spread over gray 1..255.

    Blobs smaller than `min_fraction` of the image are noise and dropped.
    Touching objects come out as one instance: paint those by hand.
    """
    rgb = np.asarray(rgb)[..., :3].astype(np.int16)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    background_colour = np.median(border, axis=0)
    near = np.abs(rgb - background_colour).max(axis=2) <= tolerance
    near_labels, _ = label_components(near)
    border_labels = np.unique(np.concatenate([near_labels[0], near_labels[-1], near_labels[:, 0], near_labels[:, -1]]))
    background = np.isin(near_labels, border_labels[border_labels > 0])
    labels, count = label_components(~background)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = [label for label in range(1, count + 1) if sizes[label] >= min_fraction * labels.size]
    if not keep:
        raise InputError("no objects found in front of a plain background; paint the masks instead (Create Blank Mask)")
    if len(keep) > protocol.MAX_INSTANCES:
        raise InputError(f"{len(keep)} objects found, more than the {protocol.MAX_INSTANCES} the backend handles; "
                         "the background is probably not plain: paint the masks instead (Create Blank Mask)")
    seg = np.zeros(labels.shape, dtype=np.uint8)
    step = 255 // len(keep)
    for k, label in enumerate(keep, start=1):
        seg[labels == label] = k * step
    return seg


def seg_image_to_array(image: bpy.types.Image) -> np.ndarray:
    """The seg image as the (H, W, 4) uint8 sent to the backend.

    A 16-bit label map (values 1..N on black, as saved by many tools) would read as black at
    8 bits; its values are sent as gray 1..N instead, which is how the backend reads such a file.
    """
    pixels = image_to_float(image)
    if image.is_float:
        labels = np.rint(pixels[..., :3].mean(axis=2) * 65535.0)
        if 0 < labels.max() <= 255:
            pixels = np.concatenate([np.repeat(labels[..., None] / 255.0, 3, axis=2), np.ones_like(pixels[..., :1])], axis=2)
    return float_to_uint8(pixels)


def create_auto_mask(reference: bpy.types.Image) -> bpy.types.Image:
    """A seg image computed from `reference` by auto_seg, named after it."""
    seg = auto_seg(image_to_array(reference))
    return array_to_image(f"{reference.name} auto mask", seg, non_color=True)


def create_blank_mask(reference: bpy.types.Image) -> bpy.types.Image:
    """A black seg image of the reference's size: paint one gray value (or flat colour) per instance over it."""
    width, height = reference.size
    if width == 0 or height == 0:
        raise InputError(f"image {reference.name!r} has no pixels (file missing or unreadable?)")
    return array_to_image(f"{reference.name} mask", np.zeros((height, width), np.uint8), non_color=True)
