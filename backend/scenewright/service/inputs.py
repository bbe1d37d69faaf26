"""Validation of a job submission, entirely in memory, before anything touches the disk.

Every problem becomes an InputError whose message says what to fix; the
service answers it with 400 and writes nothing.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..masks import InstanceMask, MaskError, instances_from_seg
from ..protocol import MAX_IMAGE_SIDE, MAX_INSTANCES, MIN_IMAGE_SIDE, GenerationSettings, SettingsError


class InputError(ValueError):
    """A submission the service refuses (answered 400); the message says what to fix."""


@dataclass
class Submission:
    """A validated job: decoded image, instance masks, settings, and the raw files to keep."""

    image: Image.Image
    masks: list[InstanceMask]
    settings: GenerationSettings
    files: dict[str, bytes]  # file name in the job folder -> bytes, as uploaded


def decode_image(data: bytes, what: str) -> Image.Image:
    """Bytes -> loaded PIL image, checking the side limits before decoding pixels (no decompression bombs)."""
    if not data:
        raise InputError(f"{what} is empty: upload a PNG (or any common image format)")
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
        width, height = image.size
        if max(width, height) > MAX_IMAGE_SIDE:
            raise InputError(f"{what} is {width}x{height} pixels; the longer side may be at most {MAX_IMAGE_SIDE}: "
                             "downscale it")
        if min(width, height) < MIN_IMAGE_SIDE:
            raise InputError(f"{what} is {width}x{height} pixels; each side must be at least {MIN_IMAGE_SIDE}")
        image.load()
    except InputError:
        raise
    except Exception as exc:  # PIL raises many exception types for non-images and corrupt files
        raise InputError(f"{what} is not a readable image ({_image_problem(exc)}); upload a valid PNG") from exc
    return image


def _image_problem(exc: Exception) -> str:
    """What was wrong with an upload, in words a user can act on (PIL's messages name in-memory objects)."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "its format is not recognised"
    text = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the upload", str(exc)).strip()
    return text or type(exc).__name__


def mask_pixels(image: Image.Image) -> np.ndarray:
    """A mask file -> (H, W) bool: light pixels are the object; transparent pixels never are."""
    mask = np.asarray(image.convert("L")) > 127
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        mask &= np.asarray(image.convert("RGBA").getchannel("A")) > 127
    return mask


def parse_settings(text: str | None) -> GenerationSettings:
    if text is None or not text.strip():
        return GenerationSettings()
    try:
        data = json.loads(text)
    except RecursionError as exc:
        raise InputError("settings is nested too deeply; send a flat JSON object such as "
                         '{"steps": 30, "seed": 0}') from exc
    except ValueError as exc:  # JSONDecodeError, and integers longer than Python's digit limit
        raise InputError(f"settings is not valid JSON ({exc}); send a JSON object such as "
                         '{"steps": 30, "seed": 0}') from exc
    if not isinstance(data, dict):
        raise InputError("settings must be a JSON object such as {\"steps\": 30, \"seed\": 0}")
    try:
        return GenerationSettings.from_dict(data)
    except SettingsError as exc:
        raise InputError(f"invalid settings: {exc}") from exc


def _check_count(count: int, source: str) -> None:
    if count == 0:
        raise InputError(f"{source} holds no instances; mark at least one object "
                         "(non-black pixels in the seg map, white pixels in a mask)")
    if count > MAX_INSTANCES:
        raise InputError(f"{source} holds {count} instances; at most {MAX_INSTANCES} are supported: merge or drop some")


def _check_size(image: Image.Image, other: Image.Image, what: str) -> None:
    if other.size != image.size:
        raise InputError(
            f"{what} is {other.size[0]}x{other.size[1]} pixels but the image is {image.size[0]}x{image.size[1]}; "
            "they must have the same size"
        )


def parse_submission(image: bytes, seg: bytes | None, masks: list[bytes], settings: str | None) -> Submission:
    """Check one upload completely (settings first: cheapest) and return what the worker needs."""
    parsed_settings = parse_settings(settings)
    if seg is not None and masks:
        raise InputError("send either a seg map ('seg') or a list of masks ('masks'), not both")
    if seg is None and not masks:
        raise InputError("no instances given: send a seg map ('seg', MIDI convention) or one mask file per instance ('masks')")
    if len(masks) > MAX_INSTANCES:
        raise InputError(f"{len(masks)} masks sent; at most {MAX_INSTANCES} instances are supported")
    scene = decode_image(image, "the image")
    files = {"image.png": image, "settings.json": json.dumps(parsed_settings.to_dict()).encode("utf-8")}
    if seg is not None:
        seg_image = decode_image(seg, "the seg map")
        _check_size(scene, seg_image, "the seg map")
        try:
            instances = instances_from_seg(seg_image)
        except MaskError as exc:
            raise InputError(str(exc)) from exc
        _check_count(len(instances), "the seg map")
        files["seg.png"] = seg
    else:
        instances = []
        for k, data in enumerate(masks):
            mask_image = decode_image(data, f"mask {k}")
            _check_size(scene, mask_image, f"mask {k}")
            mask = mask_pixels(mask_image)
            if not mask.any():
                raise InputError(f"mask {k} is empty (no white pixels); every mask must mark its object in white")
            instances.append(InstanceMask(id=k + 1, mask=mask))
            files[f"mask_{k:02d}.png"] = data
    if parsed_settings.labels is not None and len(parsed_settings.labels) != len(instances):
        raise InputError(f"settings.labels holds {len(parsed_settings.labels)} names for {len(instances)} instances; "
                         "give one per instance, in instance order (ascending seg value, or mask order)")
    # The image stays in its own mode: the pipeline turns it into RGB (transparent pixels become white, as MIDI expects).
    return Submission(image=scene, masks=instances, settings=parsed_settings, files=files)
