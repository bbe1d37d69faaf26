"""`scenewright train`: the default model's recipe, and the stages of the vecset-VAE route (for a GPU).

    scenewright train --recipe default --out RUN                      # the shipped model, on a CPU (recipe.py)

The MIDI-structured route (vecset VAE + DiT with CLIP/DINO-style encoders; docs/training.md):

    scenewright train --stage vae-data --out DATA --seeds 0:2000      # procedural scenes, no rendering
    scenewright train --stage dit-data --out DATA --cases CASES       # rendered case folders
    scenewright train --stage vae --out RUN --data DATA
    scenewright train --stage dit --out RUN --data DATA --vae RUN/vae/final
    scenewright train --export MODEL --out RUN

A stage writes RUN/<stage>/: training_config.json (the exact settings), log.jsonl
(one line per logged step), checkpoints/step-*.pt (models, optimiser, EMA, step
and every RNG state; every --checkpoint-every steps, at --stop-at, at the end and
on SIGINT). `--resume` continues the latest checkpoint bit for bit. See docs/training.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import ConfigMixin
from ..models.pose_head import PoseHead, PoseHeadConfig
from ..settings_cli import on_off
from . import data as D
from .objectives import (BatchRandom, DiTObjective, MidiBatches, SceneBatches, VAEObjective, encode_means,
                         standardize_latents)

STAGES = ("vae-data", "dit-data", "vae", "dit")
CONFIG_FILE = "training_config.json"
BRANCH_LATENTS_FILE = "branch-latents.npz"  # in the codec folder: the scene rows' latents (scene-context training)
# settings a resumed run may change: where things are on this machine, and when to stop this session
RESUMABLE_OVERRIDES = ("data", "device", "stop_at", "workers")
# exported weights are stored in half precision: half the size of the shipped model (50 MB budget);
# loading casts them to the device's dtype
EXPORT_DTYPE = torch.float16
# faces per object of the default model's meshes: light blockout meshes (32^3 marching cubes give 5k-15k)
DEFAULT_MAX_FACES = 3000


@dataclass
class TrainConfig(ConfigMixin):
    """Every setting of a run; saved as training_config.json next to checkpoints and exported weights."""

    stage: str = "vae"
    out: str = "runs/default"
    data: str = "data"
    preset: str = "small"
    vae: str | None = None  # dit: folder of the trained VAE (RUN/vae/final)
    codec: str | None = None  # codec-dit: folder of the fitted shape codec (RUN/codec)
    device: str = "auto"
    seed: int = 0
    steps: int = 20000
    stop_at: int | None = None  # end this session after this step (checkpointed); resume later
    batch_size: int = 16  # vae: instances per step; dit: instance rows per step (at least one scene)
    lr: float = 2e-4
    weight_decay: float = 0.01
    warmup: int = 500
    grad_clip: float = 1.0
    ema: float = 0.0  # EMA decay of the weights (0: off); export uses the EMA weights when on
    checkpoint_every: int = 1000
    log_every: int = 10
    num_tokens: int = 128  # latent tokens per instance
    # vae
    query_points: int = 2048
    kl_weight: float = 1e-3
    sdf_truncation: float = 0.0  # clamp target distances to +-this (0: no clamp)
    sign_weight: float = 0.0  # weight of the inside/outside cross-entropy term
    encoder_points: int = 0  # surface points the encoder sees per instance (0: all of them)
    # dit
    mi_blocks: list[int] | None = None  # None: the transformer's default_mi_blocks(3)
    cfg_drop: float = 0.15
    single_fraction: float = 0.25
    mirror: float = 0.0  # codec-dit: share of scenes seen mirrored left-right
    pose_weight: float = 1.0  # codec-dit: loss weight of the pose token relative to a shape token
    condition_extras: bool = False  # codec-dit: the condition encoder's mask geometry, coordinates and camera head
    camera_weight: float = 0.0  # codec-dit: weight of the condition encoder's camera loss (with a camera head)
    pose_head_weight: float = 0.0  # codec-dit: weight of a pose regression head's loss (0: no head)
    attention: str = "multi_instance"  # codec-dit: layout of mi_blocks, or "scene_context" (I-Scene, a scene branch)
    cpu_bf16: bool = False  # codec-dit: the condition encoder in bf16 autocast on a CPU with native bf16 (faster)
    logit_mean: float = 0.0
    logit_std: float = 1.0
    sample_steps: int = 16  # exported sampling defaults
    guidance_scale: float = 5.0
    # data preparation
    seeds: str = "0:1000"
    cases: str | None = None
    shard_size: int = 100
    workers: int = 1
    sample: dict[str, Any] = field(default_factory=lambda: D.SampleConfig().to_dict())

    @property
    def stage_dir(self) -> Path:
        return Path(self.out) / self.stage


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr, then cosine decay to 0 at cfg.steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# ---- data preparation --------------------------------------------------------------------------


def _parse_seeds(text: str) -> list[int]:
    start, _, stop = text.partition(":")
    return list(range(int(start), int(stop))) if stop else [int(start)]


def make_vae_data(cfg: TrainConfig) -> None:
    """Shards of VAE examples from procedural scenes (no rendering); finished shards are kept (resumable)."""
    from tqdm import tqdm

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    sample = D.SampleConfig(**cfg.sample)
    seeds = _parse_seeds(cfg.seeds)
    pool = ProcessPoolExecutor(cfg.workers) if cfg.workers > 1 else None
    mapper = pool.map if pool is not None else map
    try:
        with tqdm(total=len(seeds), unit="scene") as bar:
            for index, chunk in D.chunks(seeds, cfg.shard_size):
                path = out / f"vae-{index:05d}.npz"
                if not path.exists():
                    examples = list(mapper(partial(D.vae_examples, cfg=sample), chunk))
                    meta = {"kind": "vae", "seeds": [chunk[0], chunk[-1] + 1], "sample": sample.to_dict()}
                    D.write_shard(path, examples, meta)
                bar.update(len(chunk))
    finally:
        if pool is not None:
            pool.shutdown()


def make_dit_data(cfg: TrainConfig) -> None:
    """Shards of DiT examples (encoder crops + GT surface samples) from rendered case folders."""
    from tqdm import tqdm

    from ..evaluation.cases import list_cases
    from ..models.presets import PRESETS, feature_extractor_configs

    if cfg.cases is None:
        raise SystemExit("--stage dit-data needs --cases DIR (rendered case folders)")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    fe1, fe2 = feature_extractor_configs(PRESETS[cfg.preset].image_size)
    sample = D.SampleConfig(**cfg.sample)
    cases = list_cases(cfg.cases)
    with tqdm(total=len(cases), unit="case") as bar:
        for index, chunk in D.chunks(cases, cfg.shard_size):
            path = out / f"dit-{index:05d}.npz"
            if not path.exists():
                examples = [e for i, case in enumerate(chunk)
                            if (e := D.dit_example(case, fe1, fe2, sample, seed=cfg.seed + index * cfg.shard_size + i))]
                if examples:
                    meta = {"kind": "dit", "preset": cfg.preset, "image_size": PRESETS[cfg.preset].image_size,
                            "cases": [c.name for c in chunk], "sample": sample.to_dict()}
                    D.write_shard(path, examples, meta)
            bar.update(len(chunk))


# ---- the training loop -------------------------------------------------------------------------


class Trainer:
    """AdamW with warmup + cosine, gradient clipping, optional EMA, bf16 autocast on CUDA,
    checkpoints (models + optimiser + step + RNG) and jsonl/tqdm logging around one objective."""

    def __init__(self, cfg: TrainConfig, objective: VAEObjective | DiTObjective, device: torch.device):
        self.cfg, self.objective, self.device = cfg, objective, device
        self.params = [p for m in objective.modules.values() for p in m.parameters()]
        # the fused kernel: one pass over all parameters (half the optimiser's time of the CPU recipe's step)
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        self.ema = [p.detach().clone() for p in self.params] if cfg.ema > 0 else None
        self.rand = BatchRandom.seeded(cfg.seed)
        self.step = 0
        self._interrupted = False

    @property
    def checkpoint_dir(self) -> Path:
        return self.cfg.stage_dir / "checkpoints"

    def save_checkpoint(self) -> Path:
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "step": self.step,
            "models": {name: m.state_dict() for name, m in self.objective.modules.items()},
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema,
            "rand": self.rand.state(),
            "torch_rng": torch.get_rng_state(),
        }
        path = self.checkpoint_dir / f"step-{self.step:08d}.pt"
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        tmp.replace(path)
        for old in sorted(self.checkpoint_dir.glob("step-*.pt"))[:-2]:  # keep the last two
            old.unlink()
        return path

    def load_checkpoint(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=False)
        for name, module in self.objective.modules.items():
            module.load_state_dict(state["models"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.ema = state["ema"]
        self.rand.load_state(state["rand"])
        torch.set_rng_state(state["torch_rng"].cpu())
        self.step = state["step"]

    def ema_state(self, name: str) -> dict[str, torch.Tensor]:
        """State dict of module `name` with EMA weights when EMA is on."""
        module = self.objective.modules[name]
        state = module.state_dict()
        if self.ema is not None:
            index = {id(p): i for i, p in enumerate(self.params)}
            for key, param in module.named_parameters():
                state[key] = self.ema[index[id(param)]]
        return state

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self._interrupted = True

    def train(self) -> str:
        """Run until cfg.steps (returns "done"), cfg.stop_at ("stopped") or SIGINT ("interrupted")."""
        from tqdm import tqdm

        cfg = self.cfg
        end = min(cfg.steps, cfg.stop_at) if cfg.stop_at is not None else cfg.steps
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        status = "done" if end >= cfg.steps else "stopped"
        try:
            with open(cfg.stage_dir / "log.jsonl", "a") as log, tqdm(total=cfg.steps, initial=self.step,
                                                                      desc=cfg.stage, unit="step") as bar:
                clock = time.perf_counter()
                while self.step < end:
                    lr = lr_at(self.step, cfg)
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    for module in self.objective.modules.values():
                        module.train()
                    with autocast:
                        loss, stats = self.objective.loss(self.rand, self.device)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
                    self.optimizer.step()
                    if self.ema is not None:
                        torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1.0 - cfg.ema)
                    self.step += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.4f}")
                    if self.step % cfg.log_every == 0 or self.step == end:
                        record = {"step": self.step, "loss": loss.item(), "lr": lr, "grad_norm": float(grad_norm),
                                  "seconds": time.perf_counter() - clock, **stats}
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                    if self.step % cfg.checkpoint_every == 0 or self.step == end:
                        self.save_checkpoint()
                    if self._interrupted:
                        self.save_checkpoint()
                        status = "interrupted"
                        break
        finally:
            signal.signal(signal.SIGINT, previous)
        return status


def latest_checkpoint(stage_dir: Path) -> Path | None:
    found = sorted((stage_dir / "checkpoints").glob("step-*.pt"))
    return found[-1] if found else None


def build_trainer(cfg: TrainConfig) -> Trainer:
    """The objective of cfg.stage with fresh (seeded) modules and its data, on cfg.device."""
    from ..loading import load_component, resolve_device, save_component
    from ..models.presets import PRESETS, build_components, feature_extractor_configs

    device = resolve_device(cfg.device)
    if cfg.stage == "codec-dit":
        return _codec_dit_trainer(cfg, device)
    components = build_components(cfg.preset, seed=cfg.seed, device=device)
    if cfg.stage == "vae":
        data = D.load_shards(cfg.data, "vae")
        objective: VAEObjective | DiTObjective = VAEObjective(
            components["vae"], data, cfg.batch_size, cfg.num_tokens, cfg.query_points, cfg.kl_weight,
            cfg.sdf_truncation, cfg.sign_weight, cfg.encoder_points)
        return Trainer(cfg, objective, device)
    # dit: the VAE is frozen; its copy inside the run makes the run self-contained for export
    own_vae = cfg.stage_dir / "vae"
    if not own_vae.is_dir():
        if cfg.vae is None:
            raise SystemExit("--stage dit needs --vae FOLDER (the VAE stage's RUN/vae/final)")
        save_component(load_component(cfg.vae), own_vae)
    vae = load_component(own_vae, device=device)
    image_size = PRESETS[cfg.preset].image_size
    made_for = D.shard_meta(D.shard_paths(cfg.data, "dit")[0]).get("image_size")
    if made_for != image_size:
        raise SystemExit(f"the DiT shards in {cfg.data} hold {made_for} px crops but preset {cfg.preset!r} reads "
                         f"{image_size} px: remake them with --stage dit-data --preset {cfg.preset}")
    data = D.load_shards(cfg.data, "dit")
    latents = cached_latents(cfg, vae, data["surface"], device)
    fe1, fe2 = feature_extractor_configs(image_size)
    transformer = components["transformer"]
    mi_blocks = cfg.mi_blocks if cfg.mi_blocks is not None else transformer.default_mi_blocks(3)
    batches = MidiBatches(components["image_encoder_1"], components["image_encoder_2"], data, latents, fe1, fe2)
    objective = DiTObjective(transformer, batches, data["num_instances"], cfg.batch_size, transformer.layout(mi_blocks),
                             cfg.cfg_drop, cfg.single_fraction, cfg.logit_mean, cfg.logit_std)
    return Trainer(cfg, objective, device)


def _codec_dit_trainer(cfg: TrainConfig, device: torch.device) -> Trainer:
    """The default model's DiT and condition encoder over the shape codec's latents (training/recipe.py)."""
    from ..loading import load_component
    from ..models.presets import build_codec_model, codec_model_preset

    if cfg.codec is None:
        raise SystemExit("--stage codec-dit needs --codec FOLDER (the recipe's RUN/codec)")
    components = build_codec_model(codec_model_preset(load_component(cfg.codec).config, cfg.condition_extras),
                                   seed=cfg.seed, device=device)
    data = D.load_shards(cfg.data, "scene")
    with np.load(Path(cfg.codec) / "latents.npz") as cached:
        latents, mirrored = torch.from_numpy(cached["latents"]), torch.from_numpy(cached["mirrored"])
    if len(latents) != len(data["poses"]):
        raise SystemExit(f"{cfg.codec} holds latents of {len(latents)} instances but {cfg.data} has "
                         f"{len(data['poses'])}: refit the codec")
    transformer = components["transformer"]
    mi_blocks = cfg.mi_blocks if cfg.mi_blocks is not None else transformer.default_mi_blocks(3)
    branch, branch_latents = None, None
    if cfg.attention == "scene_context":
        branch = D.load_shards(cfg.data, "branch")
        with np.load(Path(cfg.codec) / BRANCH_LATENTS_FILE) as cached:
            branch_latents = (torch.from_numpy(cached["latents"]), torch.from_numpy(cached["mirrored"]))
        if len(branch_latents[0]) != len(data["num_instances"]):
            raise SystemExit(f"{cfg.codec} holds scene-branch latents of {len(branch_latents[0])} scenes but "
                             f"{cfg.data} has {len(data['num_instances'])}: remake the branch stage")
    pose_head = None
    if cfg.pose_head_weight > 0:
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            pose_head = _pose_head(components).to(device)
    batches = SceneBatches(components["condition_encoder"], data, latents, mirrored, cfg.mirror, branch, branch_latents,
                           camera_weight=cfg.camera_weight, cpu_bf16=cfg.cpu_bf16 and _native_cpu_bf16(device),
                           pose_head=pose_head, pose_head_weight=cfg.pose_head_weight)
    weights = torch.ones(transformer.config.latent_positions)
    weights[0] = cfg.pose_weight
    objective = DiTObjective(transformer, batches, data["num_instances"], cfg.batch_size,
                             transformer.layout(mi_blocks, cfg.attention), cfg.cfg_drop, cfg.single_fraction,
                             cfg.logit_mean, cfg.logit_std, token_weights=weights)
    return Trainer(cfg, objective, device)


def _native_cpu_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast can speed up training here: a CPU whose oneDNN has native bf16 (AVX512-BF16, AMX).
    Elsewhere bf16 is emulated and slower, so a run asking for it trains in float32 and says so."""
    if device.type != "cpu":
        return False
    native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if not native:
        print("train: this CPU has no native bf16; the condition encoder trains in float32", file=sys.stderr)
    return native


def cached_latents(cfg: TrainConfig, vae: nn.Module, surfaces: np.ndarray, device: torch.device) -> torch.Tensor:
    """VAE posterior means of every DiT instance, computed once per run (RUN/dit/latents.npz)."""
    path = cfg.stage_dir / D.LATENTS_FILE
    if path.exists():
        with np.load(path) as cached:
            if cached["latents"].shape[0] == len(surfaces):
                return torch.from_numpy(cached["latents"])
    latents = encode_means(vae, surfaces, cfg.num_tokens, device, seed=cfg.seed)
    np.savez(path, latents=latents.numpy())
    return latents


def finish_vae(trainer: Trainer) -> Path:
    """Standardise the latent space (folded into the weights) and write RUN/vae/final."""
    from ..loading import save_component

    cfg = trainer.cfg
    vae = trainer.objective.modules["vae"]
    vae.load_state_dict(trainer.ema_state("vae"))
    vae.eval()
    surfaces = trainer.objective.data["surface"]
    subset = np.random.default_rng(cfg.seed).choice(len(surfaces), min(len(surfaces), 512), replace=False)
    mu, std = standardize_latents(vae, encode_means(vae, surfaces[np.sort(subset)], cfg.num_tokens, trainer.device))
    final = cfg.stage_dir / "final"
    save_component(vae, final)
    summary = {"config": cfg.to_dict(), "step": trainer.step, "latent_mean": mu.tolist(), "latent_std": std.tolist()}
    (final / CONFIG_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return final


def export_model(run: str | Path, folder: str | Path) -> Path:
    """RUN/dit (latest checkpoint, EMA weights when on) + its VAE -> a model folder ScenePipeline loads."""
    from ..loading import load_component, save_pipeline
    from ..models.presets import build_components
    from ..pipeline import OPTIONS_KEY, PipelineOptions

    stage_dir = Path(run) / "dit"
    saved = TrainConfig.from_dict(json.loads((stage_dir / CONFIG_FILE).read_text()))
    components = build_components(saved.preset, seed=saved.seed)
    components["vae"] = load_component(stage_dir / "vae")
    cfg, step = _load_trained(stage_dir, components)
    transformer = components["transformer"]
    options = PipelineOptions(frame="view", num_tokens=cfg.num_tokens, steps=cfg.sample_steps,
                              guidance_scale=cfg.guidance_scale,
                              mi_blocks=cfg.mi_blocks if cfg.mi_blocks is not None else transformer.default_mi_blocks(3))
    for name in ("transformer", "vae", "image_encoder_1", "image_encoder_2"):
        components[name].to(EXPORT_DTYPE)
    folder = Path(folder)
    save_pipeline(components, folder, extra_index={OPTIONS_KEY: options.to_dict()})
    vae_summary = json.loads((Path(cfg.vae) / CONFIG_FILE).read_text()) if cfg.vae and (Path(cfg.vae) / CONFIG_FILE).exists() else None
    summary = {"dit": cfg.to_dict(), "dit_step": step, "vae": vae_summary}
    (folder / CONFIG_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return folder


def _pose_head(components: dict[str, Any]) -> PoseHead:
    """A pose head sized for a codec model's condition encoder and latent tokens."""
    encoder = components["condition_encoder"].config
    return PoseHead(PoseHeadConfig(encoder.global_dim, encoder.token_dim, components["transformer"].config.in_channels))


def _load_trained(stage_dir: Path, components: dict[str, Any]) -> tuple[TrainConfig, int]:
    """The latest checkpoint of a DiT stage into `components` (EMA weights when on); (its config, its step)."""
    checkpoint = latest_checkpoint(stage_dir)
    if checkpoint is None:
        raise SystemExit(f"no checkpoint in {stage_dir}/checkpoints: train that stage first")
    cfg = TrainConfig.from_dict(json.loads((stage_dir / CONFIG_FILE).read_text()))
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    names = list(state["models"])
    missing = [name for name in names if name not in components]
    if missing:
        raise SystemExit(f"{checkpoint}: the model has no place for its modules {missing}")
    params = [p for name in names for p in components[name].parameters()]
    for name in names:
        components[name].load_state_dict(state["models"][name])
    if state["ema"] is not None:
        with torch.no_grad():
            for param, value in zip(params, state["ema"]):
                param.copy_(value)
    return cfg, int(state["step"])


def export_codec_model(run: str | Path, folder: str | Path, recipe: dict[str, Any] | None = None,
                       share_codec_with: Path | None = None) -> Path:
    """RUN/codec-dit (latest checkpoint, EMA weights) + RUN/codec -> the default model's folder.

    A recipe's sampling settings (steps, guidance scale, mesh level) win over those the run trained with:
    they are inference choices, made after training.

    When `share_codec_with` is a model folder whose shape codec is byte for byte this run's, the export
    refers to it instead of holding a copy (two shipped models, one codec).
    """
    from ..loading import load_component, save_pipeline
    from ..models.presets import build_codec_model, codec_model_preset
    from ..pipeline import OPTIONS_KEY, PipelineOptions

    stage_dir = Path(run) / "codec-dit"
    trained = TrainConfig.from_dict(json.loads((stage_dir / CONFIG_FILE).read_text()))
    codec = load_component(trained.codec)
    components = build_codec_model(codec_model_preset(codec.config, trained.condition_extras))
    if trained.pose_head_weight > 0:
        components["pose_head"] = _pose_head(components)
    cfg, step = _load_trained(stage_dir, components)
    steps, guidance, camera_prior_weight, candidates, alternatives = cfg.sample_steps, cfg.guidance_scale, 0.0, 1, 0
    mirrored_share, fit_weight, prop_recession = 0.0, 0.0, 0.0
    if recipe is not None:
        steps, guidance = recipe["sample_steps"], recipe["guidance_scale"]
        codec.config.level = recipe["mesh_level"]
        camera_prior_weight, candidates = recipe["camera_prior_weight"], recipe["candidates"]
        mirrored_share, fit_weight = recipe["mirrored_share"], recipe["consensus_fit_weight"]
        prop_recession = recipe["prop_recession"]
        if codec.config.library_size:
            alternatives = recipe["shape_alternatives"]
    components["shape_codec"] = codec
    transformer = components["transformer"]
    options = PipelineOptions(frame="view", num_tokens=transformer.config.latent_positions, steps=steps,
                              guidance_scale=guidance,
                              mi_blocks=cfg.mi_blocks if cfg.mi_blocks is not None else transformer.default_mi_blocks(3),
                              mesh_resolution=codec.config.grid_resolution, refine_poses=True,
                              max_faces=DEFAULT_MAX_FACES, attention=cfg.attention,
                              camera_prior_weight=camera_prior_weight, candidates=candidates,
                              shape_alternatives=alternatives, mirrored_share=mirrored_share,
                              consensus_fit_weight=fit_weight, prop_recession=prop_recession)
    for name in ("transformer", "condition_encoder", "shape_codec", "pose_head"):
        if name in components:
            components[name].to(EXPORT_DTYPE)
    folder = Path(folder)
    shared = {}
    if share_codec_with is not None:
        mine, theirs = Path(cfg.codec) / "diffusion_pytorch_model.safetensors", share_codec_with / "shape_codec"
        if mine.is_file() and (theirs / mine.name).is_file():
            import safetensors.torch

            saved = safetensors.torch.load_file(str(theirs / mine.name))
            ours = {k: v.detach().to(EXPORT_DTYPE) for k, v in codec.state_dict().items()}
            if saved.keys() == ours.keys() and all(torch.equal(saved[k], ours[k]) for k in ours):
                shared["shape_codec"] = os.path.relpath(theirs, folder)
    save_pipeline(components, folder, extra_index={OPTIONS_KEY: options.to_dict()}, shared=shared)
    summary = {"recipe": recipe, "dit": cfg.to_dict(), "dit_step": step,
               "codec": json.loads((Path(cfg.codec) / "fit.json").read_text())}
    (folder / CONFIG_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return folder


# ---- command line ------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scenewright train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=STAGES)
    parser.add_argument("--export", metavar="DIR", help="write the model folder of the run --out to DIR")
    parser.add_argument("--resume", action="store_true", help="continue the latest checkpoint of RUN/<stage>")
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        if f.name in ("stage", "sample"):
            continue
        flag = "--" + f.name.replace("_", "-")
        value = getattr(defaults, f.name)
        if f.name == "mi_blocks":
            parser.add_argument(flag, type=int, nargs="*", default=None, help="multi-instance blocks")
        elif value is None:
            parser.add_argument(flag, default=None, type=int if f.name == "stop_at" else str)
        else:
            parser.add_argument(flag, type=on_off if isinstance(value, bool) else type(value), default=value)
    return parser


def main(argv: list[str]) -> int:
    if "--recipe" in argv:
        from . import recipe

        rest = list(argv)
        at = rest.index("--recipe")
        name = rest[at + 1] if at + 1 < len(rest) else ""
        if name != "default":
            print(f"scenewright train: unknown recipe {name!r} (known: default)", file=sys.stderr)
            return 2
        del rest[at : at + 2]
        return recipe.main(rest)
    args = _parser().parse_args(argv)
    values = {k: v for k, v in vars(args).items() if k not in ("export", "resume")}
    if args.export:
        folder = export_model(args.out, args.export)
        print(f"exported {folder}")
        return 0
    if args.stage is None:
        print("scenewright train: give --stage or --export (see --help)", file=sys.stderr)
        return 2
    cfg = TrainConfig.from_dict(values)
    if cfg.stage == "vae-data":
        make_vae_data(cfg)
        return 0
    if cfg.stage == "dit-data":
        make_dit_data(cfg)
        return 0
    return run_stage(cfg, resume=args.resume)


def run_stage(cfg: TrainConfig, resume: bool = False) -> int:
    """Train one stage (new or resumed); the VAE stage ends by writing RUN/vae/final."""
    stage_dir = cfg.stage_dir
    checkpoint = latest_checkpoint(stage_dir)
    if checkpoint is not None and not resume:
        print(f"{stage_dir} already has checkpoints: pass --resume, or choose a new --out", file=sys.stderr)
        return 2
    if checkpoint is not None:
        saved = json.loads((stage_dir / CONFIG_FILE).read_text())
        saved.update({k: getattr(cfg, k) for k in RESUMABLE_OVERRIDES})
        cfg = TrainConfig.from_dict(saved)
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    trainer = build_trainer(cfg)
    if checkpoint is not None:
        trainer.load_checkpoint(checkpoint)
    status = trainer.train()
    if status == "done" and cfg.stage == "vae":
        print(f"VAE written to {finish_vae(trainer)}")
    print(f"{cfg.stage}: {status} at step {trainer.step}")
    return 130 if status == "interrupted" else 0
