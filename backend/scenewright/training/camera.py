"""Training the camera estimator (models/camera_estimator.py) on the recipe's scene shards.

Each shard holds every scene's condition input (RGB + the union of the masks, 128 px) and its camera's pitch and
field of view, so the estimator trains on exactly what it sees at inference. Augmentation: left-right mirroring
(which keeps pitch and fov) and a brightness and contrast jitter (renderers differ in exposure). The last
`holdout` scenes are kept out and scored at the end (RUN/camera/fit.json).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..config import ConfigMixin
from ..models.camera_estimator import CameraEstimator, CameraEstimatorConfig, camera_loss
from ..models.condition_encoder import camera_degrees
from . import data as D

CHECKPOINT = "checkpoint.pt"


@dataclass
class CameraTrainConfig(ConfigMixin):
    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 150  # linear learning-rate warmup: without it the loss sits at the constant guess's for 500-900 steps
    weight_decay: float = 0.05
    holdout: int = 100  # scenes kept out of training and scored at the end
    seed: int = 0
    checkpoint_every: int = 250


def _jitter(scene: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """uint8 (B, 4, s, s) -> float [0, 1], half mirrored left-right, RGB brightness, contrast and sharpness jittered.

    Sharpness matters: the same scenes rendered at 512 px and shrunk read about 2 degrees steeper than
    rendered at the training renders' 256 px (docs/results.md), so the estimator sees sharper and softer
    versions of each picture (x + s (x - blur(x)), s from -1 to 1.5)."""
    x = scene.float() / 255.0
    count = len(x)
    flip = torch.rand(count, generator=generator) < 0.5
    x[flip] = x[flip].flip(-1)
    contrast = 1.0 + 0.2 * (torch.rand(count, 1, 1, 1, generator=generator) - 0.5)
    brightness = 0.1 * (torch.rand(count, 1, 1, 1, generator=generator) - 0.5)
    rgb = x[:, :3]
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :] / 16.0).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(rgb, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    sharpness = 2.5 * torch.rand(count, 1, 1, 1, generator=generator) - 1.0
    rgb = rgb + sharpness * (rgb - blurred)
    x[:, :3] = ((rgb - 0.5) * contrast + 0.5 + brightness).clamp(0.0, 1.0)
    return x


@torch.no_grad()
def mean_errors(model: CameraEstimator, scenes: torch.Tensor, cameras: np.ndarray) -> tuple[float, float]:
    """Mean absolute (pitch, fov) errors in degrees of uint8 scenes against (pitch, fov) targets."""
    model.eval()
    out = torch.cat([model(scenes[i : i + 50].float() / 255.0) for i in range(0, len(scenes), 50)])
    model.train()
    degrees = np.array([camera_degrees(o) for o in out])
    pitch, fov = np.abs(degrees - cameras).mean(axis=0)
    return float(pitch), float(fov)


def train_camera_estimator(folders: Sequence[Path], out: Path, cfg: CameraTrainConfig,
                           model_config: CameraEstimatorConfig | None = None) -> CameraEstimator:
    """Train on the scene shards of the folders (the held-out scenes are the last folder's last), checkpointing
    to `out` (resumed from there); returns the model."""
    from ..loading import save_component

    shards = [D.load_shards(folder, "scene", keys=("scene", "camera")) for folder in folders]
    scenes = torch.from_numpy(np.concatenate([s["scene"] for s in shards]))
    cameras = torch.from_numpy(np.concatenate([s["camera"] for s in shards]))
    holdout = min(cfg.holdout, len(scenes) // 5)  # a fifth at most, for small runs
    train = len(scenes) - holdout
    if train <= 0:
        raise SystemExit(f"camera estimator: no scenes in {', '.join(map(str, folders))}")
    torch.manual_seed(cfg.seed)
    model = CameraEstimator(model_config or CameraEstimatorConfig())
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    step = 0
    if (out / CHECKPOINT).is_file():
        saved = torch.load(out / CHECKPOINT, weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"])
        step = saved["step"]
    with open(out / "log.jsonl", "a") as log, tqdm(total=cfg.steps, initial=step, desc="camera", unit="step") as bar:
        while step < cfg.steps:
            lr = cfg.lr * 0.5 * (1.0 + math.cos(math.pi * step / cfg.steps)) * min(1.0, (step + 1) / (cfg.warmup + 1))
            for group in optimizer.param_groups:
                group["lr"] = lr
            index = torch.randint(0, train, (cfg.batch_size,), generator=generator)
            loss = camera_loss(model(_jitter(scenes[index], generator)), cameras[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if step % 25 == 0:
                log.write(json.dumps({"step": step, "loss": loss.item(), "lr": lr}) + "\n")
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "generator": generator.get_state(), "step": step}, out / CHECKPOINT)
    pitch, fov = mean_errors(model, scenes[train:], cameras[train:].numpy()) if holdout else (math.nan, math.nan)
    save_component(model, out)
    (out / "fit.json").write_text(json.dumps({"config": cfg.to_dict(), "scenes": int(train), "holdout": int(holdout),
                                              "holdout_mae_pitch_deg": pitch, "holdout_mae_fov_deg": fov}, indent=2) + "\n")
    return model.eval()
