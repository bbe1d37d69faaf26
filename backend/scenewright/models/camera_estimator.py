"""A camera estimator: the scene image and the union of its masks -> the camera's pitch and field of view.

The placement solves the camera from the generated meshes' silhouettes, and a
silhouette fits many (pitch, fov, distance) triples about as well: a scene
drawn a little too deep with a steeper camera looks much like the true one.
This small network reads the perspective from the picture itself (where things
stand in the frame, how the floor and the objects' tops foreshorten) and gives
the solve a prior (`camera_prior_weight` in model_index.json). It is its own
component, trained apart from the DiT on the same rendered scenes
(`scenewright train --recipe default`, stage "camera"), so a model gains it
without retraining the denoiser.
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
from .condition_encoder import camera_degrees, camera_targets, prepare_scene


@dataclass
class CameraEstimatorConfig(ConfigMixin):
    working_size: int = 256  # the padded square image is resized to this first, as the condition encoder does
    scene_size: int = 128  # the network's input size
    width: int = 24  # channels of the first stage; each later stage adds as many
    stages: int = 5  # stride-2 stages: 128 -> 4 x 4 cells, kept apart (perspective is where things are)
    hidden: int = 256


def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU())


class CameraEstimator(nn.Module):
    """scene (S, 4, s, s) in [0, 1] (RGB + union of the masks) -> standardised (pitch, fov) (S, 2)."""

    def __init__(self, config: CameraEstimatorConfig):
        super().__init__()
        self.config = config
        widths = [config.width * (k + 1) for k in range(config.stages)]
        self.trunk = nn.Sequential(*[_stage(cin, cout) for cin, cout in zip([6] + widths[:-1], widths)])
        cells = (config.scene_size >> config.stages) ** 2
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(widths[-1] * cells, config.hidden), nn.SiLU(),
                                  nn.Linear(config.hidden, 2))

    def forward(self, scene: torch.Tensor) -> torch.Tensor:
        x = scene.to(next(self.parameters()).dtype) * 2.0 - 1.0
        size = x.shape[-1]
        ramp = torch.linspace(-1.0, 1.0, size, dtype=x.dtype, device=x.device)
        planes = torch.stack([ramp[None, :].expand(size, size), ramp[:, None].expand(size, size)])
        return self.head(self.trunk(torch.cat([x, planes.expand(len(x), -1, -1, -1)], dim=1)))

    @torch.no_grad()
    def estimate_camera(self, image: Image.Image, masks: Sequence[np.ndarray]) -> tuple[float, float]:
        """(pitch, horizontal field of view of the padded square) in degrees: the mean of the estimates of the
        picture and its mirror image, which have the same camera (a tenth less error on held-out scenes)."""
        scene = prepare_scene(np.asarray(image.convert("RGB")), masks, self.config.working_size, self.config.scene_size)
        x = torch.from_numpy(scene).float()[None].to(next(self.parameters()).device) / 255.0
        return camera_degrees(self(torch.cat([x, x.flip(-1)])).mean(dim=0))


def camera_loss(predicted: torch.Tensor, pitch_fov_deg: torch.Tensor) -> torch.Tensor:
    """Smooth L1 on the standardised values: a few odd scenes do not dominate."""
    return F.smooth_l1_loss(predicted.float(), camera_targets(pitch_fov_deg[:, 0], pitch_fov_deg[:, 1]), beta=0.5)
