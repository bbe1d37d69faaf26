"""Blender images <-> uint8 arrays <-> PNG bytes (what the backend receives).

Pixels are read on the main thread (bpy is not thread-safe); PNG encoding is
pure numpy + zlib, so it can run in a worker thread.
"""

from __future__ import annotations

import os
import struct
import zlib

import bpy
import numpy as np


class InputError(ValueError):
    """The user's input (image, masks, a setting) cannot be used; the message says what to fix."""


def load_image(path: str) -> bpy.types.Image:
    """Load an image file into bpy.data, with a clear error for missing files and non-images."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise InputError(f"{path} does not exist")
    try:
        image = bpy.data.images.load(path, check_existing=True)
    except RuntimeError:
        raise InputError(f"{path} is not an image Blender can read; use a PNG or JPEG") from None
    if image.size[0] == 0 or image.size[1] == 0 or not image.has_data:  # size first: it loads the pixels
        bpy.data.images.remove(image)
        raise InputError(f"{path} is not an image Blender can read; use a PNG or JPEG")
    return image


def image_to_array(image: bpy.types.Image) -> np.ndarray:
    """(H, W, 4) uint8, first row at the top (Blender stores rows bottom-up), display-referred values."""
    return float_to_uint8(image_to_float(image))


def float_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8, rounded and clipped."""
    return np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)


def image_to_float(image: bpy.types.Image) -> np.ndarray:
    """(H, W, 4) float32 in [0, 1] at the image's own precision (16-bit files keep theirs), display-referred."""
    width, height = image.size
    if width == 0 or height == 0:
        raise InputError(f"image {image.name!r} has no pixels (file missing or unreadable?)")
    pixels = np.empty(width * height * image.channels, dtype=np.float32)
    image.pixels.foreach_get(pixels)
    pixels = pixels.reshape(height, width, image.channels)[::-1]
    if image.channels == 1:
        pixels = np.concatenate([np.repeat(pixels, 3, axis=2), np.ones_like(pixels)], axis=2)
    elif image.channels == 3:
        pixels = np.concatenate([pixels, np.ones_like(pixels[..., :1])], axis=2)
    if image.is_float and image.colorspace_settings.name != "Non-Color":
        pixels[..., :3] = _linear_to_srgb(pixels[..., :3])  # float buffers (16-bit PNG, EXR) hold scene-linear values
    return pixels


def array_to_image(name: str, array: np.ndarray, non_color: bool = False) -> bpy.types.Image:
    """A new byte image from (H, W) or (H, W, 3|4) uint8 (first row at the top), packed into the .blend."""
    array = np.asarray(array, dtype=np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.shape[2] == 3:
        array = np.concatenate([array, np.full_like(array[..., :1], 255)], axis=2)
    height, width = array.shape[:2]
    image = bpy.data.images.new(name, width, height, alpha=True)
    if non_color:
        image.colorspace_settings.name = "Non-Color"
    image.pixels.foreach_set((array[::-1].astype(np.float32) / 255.0).ravel())
    image.pack()
    return image


def encode_png(array: np.ndarray) -> bytes:
    """(H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA uint8 -> PNG bytes (8 bit, no filtering)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    color_type = {2: 0, 3: 2, 4: 6}[array.ndim if array.ndim == 2 else array.shape[2]]
    height, width = array.shape[:2]
    rows = array.reshape(height, -1)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def _linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1.0 / 2.4) - 0.055)
