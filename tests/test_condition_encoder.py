"""The default model's condition encoder: its inputs (mask geometry, mirroring) and its camera head."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from scenewright.models.condition_encoder import (
    BOX_FEATURES,
    BlockoutConditionEncoder,
    ConditionEncoderConfig,
    camera_degrees,
    camera_targets,
    flip_conditions,
    inputs_to_tensors,
    prepare_conditions,
)

CONFIG = ConditionEncoderConfig(mask_geometry=True, coordinates=True, camera_head=True)


def _scene(squash: float = 1.0) -> tuple[np.ndarray, list[np.ndarray]]:
    """A 256 px image with four rectangles: one alone, two side by side touching (the second shorter), one on the
    bottom border; `squash` shrinks every height about the image's middle row (the same things seen flatter)."""
    rng = np.random.default_rng(0)
    image = np.full((256, 256, 3), 200, np.uint8)
    masks = []
    boxes = ((40, 30, 90, 70), (120, 100, 170, 140), (130, 140, 160, 200), (200, 20, 256, 60))
    for top, left, bottom, right in boxes:
        top, bottom = (int(round(128 + (v - 128) * squash)) for v in (top, bottom))
        mask = np.zeros((256, 256), bool)
        mask[top:bottom, left:right] = True
        image[mask] = rng.integers(0, 255, 3)
        masks.append(mask)
    return image, masks


def test_mask_geometry_gives_each_mask_box_and_its_cut_sides():
    image, masks = _scene()
    boxes = prepare_conditions(image, masks, CONFIG).boxes
    assert boxes.shape == (4, CONFIG.box_features)
    edges, cut = boxes[:, BOX_FEATURES : BOX_FEATURES + 4], boxes[:, BOX_FEATURES + 4 :]
    # left, top, right, bottom in [-1, 1] frame units: pixel edges, not centres
    np.testing.assert_allclose(edges[0], [30 / 128 - 1, 40 / 128 - 1, 70 / 128 - 1, 90 / 128 - 1], atol=1e-6)
    np.testing.assert_array_equal(cut[0], [0, 0, 0, 0])  # alone: nothing may hide it
    np.testing.assert_array_equal(cut[1], [0, 0, 1, 0])  # its right side touches the third mask
    assert cut[2][0] == 1 and cut[2][2] == 0  # its left side touches the second (which also flanks its top, bottom)
    assert cut[3][3] == 1 and cut[3][1] == 0  # cut by the frame's bottom border (its sides reach it too), not on top


def test_mirrored_inputs_are_those_of_the_mirrored_image():
    """Training mirrors scenes with flip_conditions; it must give what the mirrored picture would."""
    image, masks = _scene()
    tensors = inputs_to_tensors(prepare_conditions(image, masks, CONFIG))
    mirrored = inputs_to_tensors(prepare_conditions(image[:, ::-1].copy(), [m[:, ::-1].copy() for m in masks], CONFIG))
    flipped = flip_conditions(*tensors)
    torch.testing.assert_close(flipped[0], mirrored[0])  # scene
    torch.testing.assert_close(flipped[1], mirrored[1])  # masks
    torch.testing.assert_close(flipped[3], mirrored[3])  # every box feature, geometry included


def test_old_encoders_keep_their_inputs_and_weights():
    """A folder saved before the optional inputs existed has none of the new keys: it loads as trained."""
    old = ConditionEncoderConfig.from_dict({k: v for k, v in ConditionEncoderConfig().to_dict().items()
                                            if k not in ("mask_geometry", "coordinates", "camera_head")})
    encoder = BlockoutConditionEncoder(old)
    assert old.box_features == BOX_FEATURES and encoder.camera_head is None
    assert not any(key.startswith("camera_head") for key in encoder.state_dict())
    image, masks = _scene()
    assert prepare_conditions(image, masks, old).boxes.shape == (4, BOX_FEATURES)
    assert encoder.estimate_camera(Image.fromarray(image), masks) is None


def test_camera_head_estimates_pitch_and_fov_in_degrees():
    torch.manual_seed(0)
    encoder = BlockoutConditionEncoder(CONFIG).eval()
    image, masks = _scene()
    tensors = inputs_to_tensors(prepare_conditions(image, masks, CONFIG))
    emb1, emb2, camera = encoder(*tensors, torch.zeros(len(masks), dtype=torch.long))
    assert emb1.shape == (4, 1, CONFIG.global_dim) and emb2.shape == (4, encoder.num_tokens, CONFIG.token_dim)
    assert camera.shape == (1, 2)
    pitch, fov = encoder.estimate_camera(Image.fromarray(image), masks)
    assert (pitch, fov) == pytest.approx(camera_degrees(camera[0]))
    # the standardisation round-trips
    target = camera_targets(torch.tensor([31.0]), torch.tensor([52.0]))
    assert camera_degrees(target[0]) == pytest.approx((31.0, 52.0))


def test_camera_head_learns_the_camera_from_the_picture():
    """A few steps on two pictures of one layout seen at different pitches separate their estimates: the head
    reads the picture (a head that ignored it could only give both the same answer)."""
    torch.manual_seed(0)
    encoder = BlockoutConditionEncoder(CONFIG)
    image, masks = _scene()
    flat, squashed = _scene(squash=0.5)
    low = inputs_to_tensors(prepare_conditions(image, masks, CONFIG))
    high = inputs_to_tensors(prepare_conditions(flat, squashed, CONFIG))
    batch = [torch.cat([a, b]) for a, b in zip(low, high)]
    index = torch.cat([torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)])
    target = camera_targets(torch.tensor([40.0, 15.0]), torch.tensor([47.5, 47.5]))
    optimiser = torch.optim.Adam(encoder.parameters(), lr=1e-3)
    for _ in range(30):
        _, _, camera = encoder(*batch, index)
        loss = (camera - target).pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    encoder.eval()
    estimates = [encoder.estimate_camera(Image.fromarray(picture), m)[0] for picture, m in ((image, masks), (flat, squashed))]
    assert estimates[0] > estimates[1] + 10.0
