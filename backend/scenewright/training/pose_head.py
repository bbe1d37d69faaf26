"""Training a pose head (models/pose_head.py) on a finished model's frozen condition encoder.

The recipe's pose-head stage: the head reads each instance's pose token from what the exported
encoder makes of the picture (emb1 and emb2's tokens), so its inputs are exactly the pipeline's.
The encoder's outputs for every scene and for its mirror image are computed once (cached beside the
head, the tokens in float16); the head then trains on them alone, in a few minutes, and the
denoiser's weights stay as they are. Its scenes are the DiT's plus extra ones of `make-data --props
varied` (props on beds, boxes and cylinders too, and smaller): with those the head gains on every
split, where with the DiT's alone it lost on dev (docs/results.md, "A pose head after the DiT").
The last `held_out` scenes are scored at the end (fit.json).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..config import ConfigMixin
from ..models.pose_head import PoseHead, PoseHeadConfig
from . import data as D

FIT_FILE = "fit.json"


@dataclass
class PoseHeadTrainConfig(ConfigMixin):
    steps: int = 3000
    scenes_per_batch: int = 32  # of one instance count: the head attends across a scene's instances
    lr: float = 5e-4
    warmup: int = 200
    weight_decay: float = 0.05
    ema: float = 0.995
    mirror: float = 0.5  # share of batches seen mirrored left-right
    held_out: int = 300  # the last scenes, kept out of training and scored at the end (a fifth at most)
    seed: int = 0
    token_attention: bool = True  # PoseHeadConfig.token_attention


@dataclass
class _Features:
    """Per instance: the encoder's outputs for the picture and for its mirror, and both pose targets."""

    plain: tuple[np.ndarray, np.ndarray]  # emb1 (R, global_dim) float32, emb2 (R, L, token_dim) float16
    mirrored: tuple[np.ndarray, np.ndarray]
    targets: np.ndarray  # (R, pose channels): the standardised pose token
    mirrored_targets: np.ndarray
    counts: np.ndarray  # instances per scene


@torch.no_grad()
def encoder_features(encoder: torch.nn.Module, codec: torch.nn.Module, data: Path, cache: Path) -> _Features:
    """The head's inputs and targets for every scene of the shards in `data` (features cached in `cache`)."""
    from ..models.condition_encoder import flip_conditions
    from .shape_grids import mirror_pose

    cached = cache.is_file()
    keys = ["num_instances", "poses"] + ([] if cached else ["scene", "masks", "crops", "boxes"])
    shards = D.load_shards(data, "scene", keys)
    counts = shards["num_instances"]
    poses = shards["poses"].astype(np.float64)
    mirrored_poses = np.stack([mirror_pose(p) for p in poses])
    zeros = torch.zeros(len(poses), codec.config.num_components)
    targets = codec.pack(torch.from_numpy(poses), zeros)[:, 0].numpy()
    mirrored_targets = codec.pack(torch.from_numpy(mirrored_poses), zeros)[:, 0].numpy()
    if cached:
        with np.load(cache) as saved:
            return _Features((saved["emb1"], saved["emb2"]), (saved["mirrored_emb1"], saved["mirrored_emb2"]),
                             targets, mirrored_targets, counts)
    starts = np.concatenate([[0], np.cumsum(counts)])
    config = encoder.config
    features = [(np.zeros((len(poses), config.global_dim), np.float32),
                 np.zeros((len(poses), encoder.num_tokens, config.token_dim), np.float16)) for _ in range(2)]
    batch = 32
    for first in tqdm(range(0, len(counts), batch), desc="pose head: encoder features", unit="batch"):
        scenes = range(first, min(first + batch, len(counts)))
        rows = np.concatenate([np.arange(starts[s], starts[s + 1]) for s in scenes])
        index = torch.from_numpy(np.concatenate([[k] * counts[s] for k, s in enumerate(scenes)]))
        inputs = (torch.from_numpy(shards["scene"][list(scenes)]), torch.from_numpy(shards["masks"][rows][:, None]),
                  torch.from_numpy(shards["crops"][rows]), torch.from_numpy(shards["boxes"][rows]))
        for out, flip in zip(features, (False, True)):
            scene, masks, crops, boxes = flip_conditions(*inputs) if flip else inputs
            emb1, emb2, _ = encoder(scene.float() / 255, masks.float() / 255, crops.float() / 255, boxes, index)
            out[0][rows], out[1][rows] = emb1[:, 0].numpy(), emb2.numpy()
    np.savez(cache, emb1=features[0][0], emb2=features[0][1], mirrored_emb1=features[1][0],
             mirrored_emb2=features[1][1])
    return _Features(features[0], features[1], targets, mirrored_targets, counts)


def train_pose_head(model: Path, data: list[Path], out: Path, cfg: PoseHeadTrainConfig) -> PoseHead:
    """A PoseHead on the frozen condition encoder of the model folder `model`, trained on the scene shards of
    `data` (features cached as out/features-K.npz); written to `out` as a component (EMA weights) with fit.json."""
    from ..loading import load_component, save_component

    encoder = load_component(model / "condition_encoder").float().eval()
    codec = load_component(model / "shape_codec").float().eval()
    out.mkdir(parents=True, exist_ok=True)
    parts = [encoder_features(encoder, codec, folder, out / f"features-{k}.npz") for k, folder in enumerate(data)]
    features = [[np.concatenate([getattr(p, name)[k] for p in parts]) for k in (0, 1)]
                for name in ("plain", "mirrored")]
    targets = [np.concatenate([getattr(p, name) for p in parts]) for name in ("targets", "mirrored_targets")]
    counts = np.concatenate([p.counts for p in parts])
    starts = np.concatenate([[0], np.cumsum(counts)])
    held_out = min(cfg.held_out, len(counts) // 5)
    train = len(counts) - held_out
    if train <= 0:
        raise SystemExit(f"pose head: no scenes in {', '.join(map(str, data))}")
    by_size: dict[int, list[int]] = {}
    for scene in range(train):
        by_size.setdefault(int(counts[scene]), []).append(scene)
    sizes = list(by_size)
    size_weights = np.array([len(by_size[n]) for n in sizes], np.float64)

    def batch(scenes: list[int] | np.ndarray, flip: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = np.concatenate([np.arange(starts[s], starts[s + 1]) for s in scenes])
        emb1, emb2 = features[flip]
        return (torch.from_numpy(emb1[rows])[:, None], torch.from_numpy(emb2[rows].astype(np.float32)),
                torch.from_numpy(targets[flip][rows]).float())

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    head = PoseHead(PoseHeadConfig(encoder.config.global_dim, encoder.config.token_dim, targets[0].shape[1],
                                   token_attention=cfg.token_attention))
    ema = PoseHead(head.config)
    ema.load_state_dict(head.state_dict())
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    with open(out / "log.jsonl", "w") as log, tqdm(total=cfg.steps, desc="pose head", unit="step") as bar:
        for step in range(1, cfg.steps + 1):
            size = sizes[rng.choice(len(sizes), p=size_weights / size_weights.sum())]
            scenes = rng.choice(by_size[size], min(cfg.scenes_per_batch, len(by_size[size])), replace=False)
            emb1, emb2, target = batch(scenes, int(rng.random() < cfg.mirror))
            lr = cfg.lr * (min(1.0, step / cfg.warmup) * 0.5 * (1 + float(np.cos(np.pi * step / cfg.steps))))
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = (head(emb1, emb2, size) - target).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                for average, current in zip(ema.parameters(), head.parameters()):
                    average.mul_(cfg.ema).add_(current, alpha=1 - cfg.ema)
            bar.update(1)
            if step % 25 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
                log.write(json.dumps({"step": step, "loss": loss.item(), "lr": lr}) + "\n")
    ema.eval()
    held = _mean_error(ema, batch, range(train, len(counts)), counts)
    save_component(ema, out)
    variance = float(targets[0][starts[train]:].var(0).mean()) if held_out else math.nan
    fit = {"config": cfg.to_dict(), "scenes": int(train), "held_out": int(held_out), "instances": int(starts[-1]),
           "held_out_mse": held, "held_out_target_variance": variance}
    (out / FIT_FILE).write_text(json.dumps(fit, indent=2) + "\n")
    return ema


@torch.no_grad()
def _mean_error(head: PoseHead, batch, scenes: range, counts: np.ndarray) -> float:
    """Mean squared error per pose number over the rows of `scenes` (a scene at a time: its own group size)."""
    total, rows = 0.0, 0
    for scene in scenes:
        emb1, emb2, target = batch([scene], 0)
        total += float((head(emb1, emb2, int(counts[scene])) - target).pow(2).mean(1).sum())
        rows += len(target)
    return total / rows if rows else math.nan
