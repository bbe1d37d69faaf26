"""The camera estimator's training: it learns pitch and field of view from pictures that carry them.

Synthetic scenes stand in for renders: a floor whose far edge sits higher in the frame the flatter the
camera looks, and a square whose size shrinks as the field of view widens. The trained estimator must
beat the best constant guess by far on held-out scenes; a broken loss, target scaling or augmentation
would not.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from scenewright.models.camera_estimator import CameraEstimatorConfig
from scenewright.training import data as D
from scenewright.training.camera import CameraTrainConfig, mean_errors, train_camera_estimator

SIZE = 128


def _scene(pitch: float, fov: float, rng: np.random.Generator) -> np.ndarray:
    scene = np.full((4, SIZE, SIZE), 200, np.uint8)
    edge = int(round(SIZE * (0.85 - (pitch - 10.0) / 35.0 * 0.7)))  # 10 deg: low in the frame, 45: near the top
    scene[:3, edge:] = 120
    side = int(round(SIZE * 0.12 / math.tan(math.radians(fov) / 2.0)))  # 49 px at 35 deg, 27 at 60
    top, left = rng.integers(0, SIZE - side, size=2)
    scene[:3, top : top + side, left : left + side] = np.array([40, 90, 160], np.uint8)[:, None, None]
    scene[3, top : top + side, left : left + side] = 255
    return scene


def _write_shards(folder: Path, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cameras = np.stack([rng.uniform(10.0, 45.0, count), rng.uniform(35.0, 60.0, count)], axis=1).astype(np.float32)
    scenes = [{"scene": _scene(p, f, rng)[None], "camera": np.array([[p, f]], np.float32)} for p, f in cameras]
    folder.mkdir(parents=True)
    for index, start in enumerate(range(0, count, 50)):
        D.write_shard(folder / f"scene-{index:05d}.npz", scenes[start : start + 50], {"kind": "scene"})
    return cameras


def test_the_camera_estimator_learns_pitch_and_fov(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    # two folders of shards, as the recipe's (the DiT's scenes and the pose head's); the last one's last are held out
    cameras = np.concatenate([_write_shards(tmp_path / "data-a", 100, seed=0), _write_shards(tmp_path / "data-b", 150, seed=2)])
    cfg = CameraTrainConfig(steps=200, batch_size=32, lr=2e-3, holdout=50)
    model = train_camera_estimator([tmp_path / "data-a", tmp_path / "data-b"], tmp_path / "camera", cfg,
                                   CameraEstimatorConfig(width=8, hidden=32))

    fit = json.loads((tmp_path / "camera" / "fit.json").read_text())
    held_out = cameras[-50:]
    constant = np.abs(held_out - cameras[:-50].mean(axis=0)).mean(axis=0)  # the best guess without the picture
    assert fit["scenes"] == 200 and fit["holdout"] == 50
    assert fit["holdout_mae_pitch_deg"] < 0.12 * constant[0]
    assert fit["holdout_mae_fov_deg"] < 0.7 * constant[1]

    # new scenes, never seen: the saved component reads the same
    fresh = _write_shards(tmp_path / "fresh", 50, seed=1)
    scenes = torch.from_numpy(D.load_shards(tmp_path / "fresh", "scene")["scene"])
    pitch, _ = mean_errors(model, scenes, fresh)
    assert pitch < 0.12 * np.abs(fresh[:, 0] - cameras[:, 0].mean()).mean()
