"""Preprocessing reproduces MIDI-3D's encoder inputs exactly, and real-world input pairs are accepted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from scenewright.image_processing import (
    ImageProcessorConfig,
    build_conditions,
    preprocess,
    split_instances,
    to_rgb_image,
)
from scenewright.loading import load_component
from scenewright.masks import instances_from_seg


@pytest.fixture(scope="module")
def tiny(golden_dir: Path) -> Path:
    return golden_dir / "tiny-midi-3d"


@pytest.fixture(scope="module")
def processors(tiny: Path) -> tuple[ImageProcessorConfig, ImageProcessorConfig]:
    return load_component(tiny / "feature_extractor_1"), load_component(tiny / "feature_extractor_2")


def test_e2e_case_pixels_and_embeddings(golden_dir, tiny, processors):
    case = load_file(golden_dir / "e2e_pipeline_case.safetensors")
    scene = Image.open(golden_dir / "e2e_scene_rgb.png")
    masks = [m.mask for m in instances_from_seg(Image.open(golden_dir / "e2e_scene_seg.png"))]
    assert len(masks) == 3

    clip_pixels, dino_pixels = build_conditions(scene, masks, *processors)
    torch.testing.assert_close(clip_pixels, case["clip_pixel_values"], atol=1e-6, rtol=0)
    torch.testing.assert_close(dino_pixels, case["dino_pixel_values_7ch"], atol=1e-6, rtol=0)

    with torch.no_grad():
        embeds_1 = load_component(tiny / "image_encoder_1")(clip_pixels).unsqueeze(1)
        embeds_2 = load_component(tiny / "image_encoder_2")(dino_pixels)
    torch.testing.assert_close(embeds_1, case["image_embeds_1"], atol=1e-4, rtol=0)
    torch.testing.assert_close(embeds_2, case["image_embeds_2"], atol=1e-4, rtol=0)


def test_example_inputs_are_accepted(shared_dir, processors):
    folder = shared_dir / "examples" / "midi-inputs"
    names = sorted(p.name[: -len("_rgb.png")] for p in folder.glob("*_rgb.png"))
    assert names
    for name in names:
        _check_example(folder, name, processors)


def _check_example(folder, name, processors):
    scene = Image.open(folder / f"{name}_rgb.png")
    seg = Image.open(folder / f"{name}_seg.png")
    # Independent count: distinct non-zero 8-bit gray values of the seg map (MIDI's reader).
    gray = np.asarray(seg.convert("RGB").convert("L"))
    expected = len(set(np.unique(gray).tolist()) - {0})
    masks = [m.mask for m in instances_from_seg(seg)]
    assert len(masks) == expected > 0, name

    clip_pixels, dino_pixels = build_conditions(scene, masks, *processors)
    fe1, fe2 = processors
    n = len(masks)
    assert clip_pixels.shape == (n, 3, fe1.crop_size["height"], fe1.crop_size["width"])
    assert dino_pixels.shape == (n, 7, fe2.crop_size["height"], fe2.crop_size["width"])
    assert torch.isfinite(clip_pixels).all() and torch.isfinite(dino_pixels).all()
    assert set(dino_pixels[:, 6].unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(dino_pixels[:, 3:6], dino_pixels[:1, 3:6].expand(n, -1, -1, -1))  # one scene for all


def test_split_instances_paints_outside_white():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, size=(5, 7, 3), dtype=np.uint8)
    mask = np.zeros((5, 7), bool)
    mask[1:3, 2:6] = True
    (inst,) = split_instances(Image.fromarray(pixels), [mask])
    out = np.asarray(inst)
    assert np.array_equal(out[mask], pixels[mask])
    assert (out[~mask] == 255).all()
    with pytest.raises(ValueError, match="mask 0 has shape"):
        split_instances(Image.fromarray(pixels), [mask.T])


def test_rgba_is_composited_on_white():
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0  # fully transparent: white
    rgba[1, 1, 3] = 128  # half transparent: blended towards white
    rgb = np.asarray(to_rgb_image(rgba))
    assert tuple(rgb[0, 0]) == (255, 255, 255)
    assert tuple(rgb[2, 2]) == (10, 20, 30)
    assert 10 < rgb[1, 1, 0] < 255
    opaque = rgba.copy()
    opaque[..., 3] = 255
    assert np.array_equal(np.asarray(to_rgb_image(Image.fromarray(opaque))), opaque[..., :3])


@pytest.mark.parametrize("size", [(80, 64), (64, 80), (37, 300), (20, 20)])
def test_preprocess_any_size_gives_the_crop(size):
    cfg = ImageProcessorConfig.from_dict(
        {"size": {"shortest_edge": 32}, "crop_size": 28, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    )
    image = Image.fromarray(np.full((size[1], size[0], 3), 255, np.uint8))
    pixels = preprocess([image, image], cfg)
    assert pixels.shape == (2, 3, 28, 28)
    torch.testing.assert_close(pixels, torch.ones_like(pixels))  # white -> (1 - 0.5) / 0.5
