"""Both image encoders, loaded from the tiny MIDI-3D replica, reproduce the reference (transformers 4.49) outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scenewright.loading import load_component
from scenewright.models.image_encoders import CLIPVisionModelWithProjection, Dinov2Model

ATOL = 1e-5


@pytest.fixture(scope="module")
def cases(golden_dir: Path) -> dict[str, torch.Tensor]:
    # Fresh copies: the reference outputs were computed from aligned, freshly allocated inputs.
    return {k: v.clone() for k, v in load_file(golden_dir / "image_encoder_cases.safetensors").items()}


@pytest.fixture(scope="module")
def clip(golden_dir: Path) -> CLIPVisionModelWithProjection:
    return load_component(golden_dir / "tiny-midi-3d" / "image_encoder_1")


@pytest.fixture(scope="module")
def dino(golden_dir: Path) -> Dinov2Model:
    return load_component(golden_dir / "tiny-midi-3d" / "image_encoder_2")


@torch.no_grad()
def test_clip_image_embeds_and_hidden_states(clip, cases):
    assert isinstance(clip, CLIPVisionModelWithProjection)
    last_hidden_state, _ = clip.vision_model(cases["clip_pixel_values"])
    torch.testing.assert_close(last_hidden_state, cases["clip_last_hidden_state"], atol=ATOL, rtol=0)
    torch.testing.assert_close(clip(cases["clip_pixel_values"]), cases["clip_image_embeds"], atol=ATOL, rtol=0)


@torch.no_grad()
def test_dino_interpolated_position_table(dino, cases):
    """56x56 inputs (4x4 patches) against the 5x5 table: bicubic position interpolation."""
    assert isinstance(dino, Dinov2Model)
    out = dino(cases["dino_pixel_values"])
    torch.testing.assert_close(out, cases["dino_last_hidden_state"], atol=ATOL, rtol=0)
    torch.testing.assert_close(out[:, 0], cases["dino_pooler_output"], atol=ATOL, rtol=0)


@torch.no_grad()
def test_dino_native_size(dino, cases):
    out = dino(cases["dino_pixel_values_native"])
    torch.testing.assert_close(out, cases["dino_last_hidden_state_native"], atol=ATOL, rtol=0)


@torch.no_grad()
def test_encoders_refuse_wrong_inputs(clip, dino, cases):
    with pytest.raises(ValueError, match="7 input channels"):
        dino(cases["dino_pixel_values"][:, :3])
    with pytest.raises(ValueError, match="position table"):
        clip(torch.zeros(1, 3, 70, 70))
