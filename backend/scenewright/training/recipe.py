"""`scenewright train --recipe default --out RUN`: the default model, from nothing to a shipped, measured folder.

Stages, each resumable (a finished stage is skipped, an interrupted one continues):

1. cases     RUN/cases/        procedural blockout scenes rendered by `make-data`
2. data      RUN/data/         scene shards: condition-encoder inputs, box poses, SDF grids
3. codec     RUN/codec/        the shape codec (closed-form PCA) and every instance's latent
   library   RUN/codec/        the codec's library of clean procedural shapes (--library-objects N; 0: none)
   pose-data RUN/pose-head/cases/, data/  with --pose-head-scenes N: N more scenes (`make-data --props varied`)
   camera    RUN/camera/       with --camera-estimator on: the camera estimator (training/camera.py), on the
                               scenes of both
   branch    RUN/data/branch-*  with --attention scene_context only: each scene's scene row (I-Scene's scene
                                branch) and its latents (RUN/codec/branch-latents.npz)
4. dit       RUN/codec-dit/    DiT + condition encoder (checkpoints, log.jsonl)
5. export    the model folder  (default: the package's assets/default-model)
   pose-head RUN/pose-head/head/  a pose head on the exported, frozen condition encoder (training/pose_head.py),
                               added to the model folder
6. eval      RUN/eval/         predict + eval on ../shared/benchmark/dev when it is there

Every setting is in RUN/recipe.json (and the DiT stage's in RUN/codec-dit/training_config.json);
the exported folder carries both in training_config.json. Stage times go to RUN/stages.json.
A resumed run keeps the training settings it started with; where its results go (--export,
--benchmark, --evaluate) may change, e.g. to export a finished run into the package.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..config import ConfigMixin
from ..settings_cli import on_off
from . import data as D

if TYPE_CHECKING:
    from ..models.presets import CodecModelPreset
    from .train import TrainConfig

RECIPE_FILE = "recipe.json"
STAGE_TIMES = "stages.json"
LATENTS_FILE = "latents.npz"
CAMERA_DIR = "camera"
POSE_HEAD_DIR = "pose-head"


def _setting(default: Any, help: str) -> Any:
    """A recipe field with its --help text: the CLI and recipe.json read the same definition."""
    return field(default=default, metadata={"help": help})


@dataclass
class RecipeConfig(ConfigMixin):
    """Every setting of the default recipe (docs/model-card.md says what each stage makes of them)."""

    seed: int = _setting(0, "seed of the scenes, the codec's object sample and the training")
    cases: int = _setting(3000, "procedural training scenes rendered")
    render_resolution: int = _setting(256, "render size in pixels: the condition encoder's working size, no resizing")
    workers: int = _setting(2, "processes for rendering and for the scene shards")
    shard_size: int = _setting(100, "scenes per data shard")
    fit_objects: int = _setting(6000, "objects the codec's PCA is fitted on (each also mirrored)")
    grid_resolution: int = _setting(32, "the shape codec's signed-distance grid, samples per axis")
    library_objects: int = _setting(60, "objects of each shape family in the codec's library of clean shapes, each "
                                        "in its 4 quarter turns and mirrored (0: none)")
    shape_alternatives: int = _setting(8, "library shapes nearest each sampled one tried against its mask after the "
                                          "pose fit, one kept where its silhouette fits better (0: shapes as "
                                          "sampled; needs a library)")
    num_components: int = _setting(64, "the codec's PCA components (with the 8 pose numbers a multiple of 8)")
    steps: int = _setting(9000, "DiT steps: about 87 minutes at 2 threads on an idle 2-core CPU with --cpu-bf16 "
                                "(0.58 s a step; `scenewright bench train-step RUN`, docs/performance.md)")
    batch_size: int = _setting(32, "instance rows per DiT step")
    lr: float = _setting(4e-4, "AdamW learning rate (cosine decay)")
    warmup: int = _setting(300, "warm-up steps of the learning rate")
    ema: float = _setting(0.999, "EMA decay of the exported weights")
    mirror: float = _setting(0.5, "share of scenes seen mirrored left-right")
    pose_weight: float = _setting(4.0, "loss weight of the pose token (8 numbers that decide placement, "
                                       "against 64 for the shape)")
    condition_extras: bool = _setting(False, "the condition encoder's mask geometry, coordinate planes and camera "
                                             "head (docs/training.md): better on the validation split, worse on "
                                             "dev (docs/results.md), so off")
    camera_weight: float = _setting(0.0, "with --condition-extras: the camera head's loss weight (pitch and fov, "
                                         "standardised), e.g. 0.2")
    pose_head_weight: float = _setting(0.0, "loss weight of a pose regression head on the condition encoder, trained "
                                            "beside the DiT and exported with it (0: none; docs/results.md)")
    pose_head_scenes: int = _setting(2000, "extra scenes (`make-data --props varied`: props on beds, boxes and "
                                           "cylinders too, and smaller) for a pose head trained after the DiT on its "
                                           "frozen condition encoder, with the DiT's scenes (0: no such head)")
    pose_head_seed: int = _setting(7, "dataset seed of the pose head's extra scenes")
    pose_head_steps: int = _setting(3000, "the frozen-encoder pose head's training steps (32 scenes each)")
    pose_head_blend: float = _setting(0.5, "the exported model's share of the pose head's read in each instance's "
                                           "pose token (the sampler's the rest)")
    attention: str = _setting("multi_instance", "multi_instance, or scene_context: I-Scene's scene-context "
                                                "attention with a scene branch")
    mi_blocks: int = _setting(3, "K: the DiT's middle blocks with multi-instance (or scene-context) attention "
                                 "(MIDI: 5 of 21)")
    cfg_drop: float = _setting(0.15, "share of scenes trained without conditions (classifier-free guidance)")
    single_fraction: float = _setting(0.25, "share of single-object batches, multi-instance attention off")
    # sampling settings of the exported model, chosen after training on the validation split (docs/training.md)
    sample_steps: int = _setting(12, "the exported model's sampling steps")
    guidance_scale: float = _setting(2.0, "the exported model's guidance scale")
    mesh_level: float = _setting(0.01, "the exported codec's marching-cubes level: a little outside the zero "
                                       "set keeps thin parts")
    camera_estimator: bool = _setting(True, "train a camera estimator (pitch and fov from the image, "
                                            "models/camera_estimator.py) as the camera solve's prior")
    camera_steps: int = _setting(1500, "the camera estimator's training steps (64 scenes each)")
    camera_warmup: int = _setting(150, "the camera estimator's learning-rate warmup steps (without, its loss "
                                       "stays at the constant guess's for a random 500-900 steps)")
    camera_seed: int = _setting(2, "the camera estimator's seed (its errors vary by seed; 2 of 0-2 chosen on the "
                                   "validation, hard and sel4 splits, docs/results.md)")
    camera_prior_weight: float = _setting(10.0, "how strongly the camera solve follows the camera estimate: the "
                                                "camera estimator's, else with --condition-extras the encoder's "
                                                "head (10 all but fixes it; chosen on the validation split)")
    candidates: int = _setting(6, "scenes sampled per request, the one the others agree with most kept")
    mirrored_share: float = _setting(0.5, "the share of those scenes sampled from the mirrored picture (its "
                                          "meshes reflected back): the two err differently (docs/results.md)")
    consensus_fit_weight: float = _setting(0.5, "how much a placed scene's silhouette fit to the masks counts "
                                                "beside its agreement with the others when one is kept "
                                                "(docs/results.md)")
    prop_recession: float = _setting(0.01, "the kept scene's instances resting on another moved back along their "
                                           "camera rays by this share of their distance, their pictures kept: "
                                           "placed props sit too near their supports (chosen on the validation, "
                                           "hard and sel4 splits, docs/results.md)")
    threads: int = _setting(2, "torch threads of the training and evaluation stages")
    cpu_bf16: bool = _setting(True, "the DiT stage's condition encoder in bf16 autocast on a CPU with native bf16 "
                                    "(AVX512-BF16 or AMX; elsewhere float32): a cheaper step (docs/performance.md)")
    checkpoint_every: int = _setting(500, "DiT steps between checkpoints")
    export: str = _setting("", "model folder to write; '' = the package's assets/default-model "
                               "(default-sca-model for scene_context)")
    benchmark: str = _setting("", "cases to evaluate on; '' = ../shared/benchmark/dev when it exists")
    evaluate: bool = _setting(True, "predict + eval on the benchmark after the export")


# where a run's results go, not what it trains: a resumed run may change them
OUTPUT_SETTINGS = ("export", "benchmark", "evaluate")
# settings added after runs had started: a run whose recipe.json lacks one resumes as it was made
ADDED_LATER = {"pose_head_scenes": 0, "library_objects": 0, "shape_alternatives": 0, "mirrored_share": 0.0,
               "consensus_fit_weight": 0.0, "camera_warmup": 0, "prop_recession": 0.0}
LIBRARY_FILE = "library.json"


def saved_recipe(path: Path) -> RecipeConfig:
    """A run's recipe.json, the settings added since it was written filled in as the run was made."""
    made = json.loads(path.read_text())
    # before the camera estimator had its own seed it trained with the recipe's
    return RecipeConfig.from_dict({**ADDED_LATER, "camera_seed": made.get("seed", 0), **made})


def training_settings(cfg: RecipeConfig) -> dict[str, Any]:
    """The settings that decide the trained model: all but where its outputs go."""
    return {k: v for k, v in cfg.to_dict().items() if k not in OUTPUT_SETTINGS}


def recipe_preset(cfg: RecipeConfig) -> "CodecModelPreset":
    """The architecture the recipe trains: the default model's around the recipe's codec size."""
    from ..models.presets import codec_model_preset
    from ..models.shape_codec import POSE_SIZE, ShapeCodecConfig

    channels = ShapeCodecConfig.channels
    if (POSE_SIZE + cfg.num_components) % channels:
        raise SystemExit(f"--num-components {cfg.num_components}: with the {POSE_SIZE} pose numbers it must fill "
                         f"{channels}-channel tokens (a multiple of {channels})")
    codec = ShapeCodecConfig(grid_resolution=cfg.grid_resolution, num_components=cfg.num_components,
                             tokens=(POSE_SIZE + cfg.num_components) // channels, channels=channels)
    return codec_model_preset(codec, cfg.condition_extras)


def _stage_done(run: Path, stage: str, seconds: float) -> None:
    path = run / STAGE_TIMES
    times = json.loads(path.read_text()) if path.exists() else {}
    times[stage] = round(times.get(stage, 0.0) + seconds, 1)
    path.write_text(json.dumps(times, indent=2) + "\n")


def render_cases(run: Path, cfg: RecipeConfig) -> None:
    _render(run / "cases", cfg.cases, cfg.seed, "default", cfg)


def _render(folder: Path, count: int, seed: int, props: str, cfg: RecipeConfig) -> None:
    from ..data import generate

    code = generate.main(["--out", str(folder), "--count", str(count), "--seed", str(seed), "--props", props,
                          "--resolution", str(cfg.render_resolution), "--workers", str(cfg.workers)])
    if code != 0:
        raise SystemExit(f"rendering failed (exit {code}); run the recipe again to retry the failed cases")


def _shard(task: tuple[Path, list[Path], int], condition: Any, codec: Any, seed: int, grids: bool) -> int:
    path, cases, first = task
    examples = [e for k, case in enumerate(cases)
                if (e := D.scene_example(case, condition, codec.grid_resolution, codec.truncation, seed + first + k,
                                         grids=grids))]
    meta = {"kind": "scene", "cases": [c.name for c in cases], "condition": condition.to_dict(), "codec": codec.to_dict()}
    return D.write_shard(path, examples, meta)


def make_scene_data(run: Path, cfg: RecipeConfig) -> None:
    """Scene shards of every rendered case (resumable: finished shards are kept)."""
    _make_shards(run / "cases", run / "data", cfg.cases, cfg.seed, cfg, grids=True)


def _make_shards(cases_folder: Path, out: Path, count: int, seed: int, cfg: RecipeConfig, grids: bool) -> None:
    from tqdm import tqdm

    from ..data.generate import case_name

    out.mkdir(parents=True, exist_ok=True)
    cases = [cases_folder / case_name(i) for i in range(count)]
    tasks = [(out / f"scene-{index:05d}.npz", list(chunk), index * cfg.shard_size)
             for index, chunk in D.chunks(cases, cfg.shard_size)]
    # a shard covers fixed case indices; one whose cases are not all rendered yet waits for the next run
    todo = [t for t in tasks if not t[0].exists() and all((c / "scene.json").is_file() for c in t[1])]
    preset = recipe_preset(cfg)
    work = partial(_shard, condition=preset.condition_encoder, codec=preset.shape_codec, seed=seed, grids=grids)
    with tqdm(total=len(tasks), initial=len(tasks) - len(todo), desc="scene shards", unit="shard") as bar:
        if cfg.workers > 1:
            with ProcessPoolExecutor(cfg.workers, initializer=_one_thread) as pool:
                for _ in pool.map(work, todo):
                    bar.update(1)
        else:
            for task in todo:
                work(task)
                bar.update(1)


def _one_thread() -> None:
    torch.set_num_threads(1)


def fit_shape_codec(run: Path, cfg: RecipeConfig) -> None:
    """PCA of the grids of `fit_objects` training objects and their mirrors; latents of every instance."""
    from ..loading import save_component
    from .shape_grids import fit_codec, mirror_x

    data = D.load_shards(run / "data", "scene")
    poses, grids = data["poses"].astype(np.float64), data["grids"]
    config = recipe_preset(cfg).shape_codec
    mirrored = [mirror_x(p, g.reshape((config.grid_resolution,) * 3)) for p, g in zip(poses, grids)]
    mirror_poses = np.stack([p for p, _ in mirrored])
    rng = np.random.default_rng(cfg.seed)
    pick = np.sort(rng.choice(len(grids), min(cfg.fit_objects, len(grids)), replace=False))
    fit_grids = np.concatenate([grids[pick].astype(np.float32),
                                np.stack([mirrored[i][1].reshape(-1) for i in pick]).astype(np.float32)])
    codec = fit_codec(fit_grids, np.concatenate([poses, mirror_poses]), config)
    del fit_grids
    with torch.no_grad():
        coefficients = torch.cat([codec.project(torch.from_numpy(chunk.astype(np.float32)))
                                  for chunk in np.array_split(grids, max(1, len(grids) // 2000))])
        mirror_coefficients = torch.cat([
            codec.project(torch.from_numpy(np.stack([mirrored[i][1].reshape(-1) for i in idx]).astype(np.float32)))
            for idx in np.array_split(np.arange(len(grids)), max(1, len(grids) // 2000))])
        latents = codec.pack(torch.from_numpy(poses), coefficients)
        mirror_latents = codec.pack(torch.from_numpy(mirror_poses), mirror_coefficients)
    folder = run / "codec"
    (folder / LIBRARY_FILE).unlink(missing_ok=True)  # a new codec needs its library projected again
    save_component(codec, folder)
    np.savez(folder / LATENTS_FILE, latents=latents.numpy(), mirrored=mirror_latents.numpy())
    summary = {"objects": int(len(grids)), "fit_objects": int(len(pick)) * 2,
               "coefficient_std_min": float(coefficients.std(0).min()), "coefficient_std_max": float(coefficients.std(0).max())}
    (folder / "fit.json").write_text(json.dumps(summary, indent=2) + "\n")


def make_shape_library(run: Path, cfg: RecipeConfig) -> None:
    """RUN/codec gains its library of clean procedural shapes (written back in place; the export carries it)."""
    from ..loading import load_component, save_component

    codec, summary = _with_library(load_component(run / "codec"), cfg)
    save_component(codec, run / "codec")
    (run / "codec" / LIBRARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")


def add_shape_library(folder: Path, cfg: RecipeConfig) -> None:
    """A model folder's shape codec gains the library, as the recipe's library stage builds it, and the folder's
    pipeline options `cfg.shape_alternatives`: a model trained before that stage existed chooses among library
    shapes without being trained again."""
    from ..loading import load_component, save_component
    from .train import EXPORT_DTYPE

    if cfg.library_objects < 1:
        raise ValueError(f"a library needs objects: library_objects is {cfg.library_objects} (e.g. 60)")
    start = time.perf_counter()
    codec, summary = _with_library(load_component(folder / "shape_codec"), cfg)
    save_component(codec.to(EXPORT_DTYPE), folder / "shape_codec")
    summary["seconds"] = round(time.perf_counter() - start, 1)
    _record_in_folder(folder, {}, {"shape_alternatives": cfg.shape_alternatives}, "library", summary,
                      {"library_objects": cfg.library_objects, "shape_alternatives": cfg.shape_alternatives})


def _with_library(codec: Any, cfg: RecipeConfig) -> tuple[Any, dict[str, Any]]:
    from .shape_library import add_library, build_library

    def progress(family: str, count: int) -> None:
        print(f"recipe: library: {family} ({count} shapes)", file=sys.stderr)

    library = build_library(codec, cfg.library_objects, cfg.seed, cfg.workers, progress)
    summary = {"shapes": len(library), "objects_per_family": cfg.library_objects, "seed": cfg.seed}
    return add_library(codec, library), summary


def _branch_shard(task: tuple[Path, list[Path], int], condition: Any, codec: Any, seed: int) -> int:
    path, cases, first = task
    examples = [e for k, case in enumerate(cases)
                if (e := D.scene_branch_example(case, condition, codec.grid_resolution, codec.truncation, seed + first + k))]
    return D.write_shard(path, examples, {"kind": "branch", "cases": [c.name for c in cases]})


def make_branch_data(run: Path, cfg: RecipeConfig) -> None:
    """Scene-context training: each case's scene row (data.scene_branch_example) in shards beside the scene
    shards, and its latents from the fitted codec (RUN/codec/branch-latents.npz)."""
    from ..data.generate import case_name
    from ..loading import load_component
    from .shape_grids import mirror_x
    from .train import BRANCH_LATENTS_FILE

    out = run / "data"
    cases = [run / "cases" / case_name(i) for i in range(cfg.cases)]
    tasks = [(out / f"branch-{index:05d}.npz", list(chunk), index * cfg.shard_size)
             for index, chunk in D.chunks(cases, cfg.shard_size)]
    preset = recipe_preset(cfg)
    work = partial(_branch_shard, condition=preset.condition_encoder, codec=preset.shape_codec, seed=cfg.seed)
    todo = [t for t in tasks if not t[0].exists()]
    if todo:
        with ProcessPoolExecutor(max(cfg.workers, 1), initializer=_one_thread) as pool:
            list(pool.map(work, todo))
    branch = D.load_shards(out, "branch")
    codec = load_component(run / "codec")
    resolution = codec.config.grid_resolution
    mirrored = [mirror_x(p, g.reshape((resolution,) * 3)) for p, g in zip(branch["poses"].astype(np.float64), branch["grids"])]
    with torch.no_grad():
        latents = codec.pack(torch.from_numpy(branch["poses"].astype(np.float64)),
                             codec.project(torch.from_numpy(branch["grids"].astype(np.float32))))
        flipped = codec.pack(torch.from_numpy(np.stack([p for p, _ in mirrored])),
                             codec.project(torch.from_numpy(np.stack([g.reshape(-1) for _, g in mirrored]).astype(np.float32))))
    np.savez(run / "codec" / BRANCH_LATENTS_FILE, latents=latents.numpy(), mirrored=flipped.numpy())


def train_camera_stage(run: Path, cfg: RecipeConfig) -> None:
    """The camera estimator, trained on the condition inputs and cameras of every rendered scene: the pose head's
    extra scenes, when there are any, and the DiT's, whose last ones are held out (training/camera.py)."""
    from .camera import CameraTrainConfig, train_camera_estimator

    folders = ([run / POSE_HEAD_DIR / "data"] if cfg.pose_head_scenes else []) + [run / "data"]
    train_camera_estimator(folders, run / CAMERA_DIR, CameraTrainConfig(steps=cfg.camera_steps, seed=cfg.camera_seed,
                                                                         warmup=cfg.camera_warmup))


def export_camera_estimator(run: Path, folder: Path, prior_weight: float) -> None:
    """Add RUN/camera to an exported model folder as its `camera_estimator`, with the solve's prior weight.

    Apart from the DiT's export, so a model folder gains an estimator without retraining its denoiser."""
    fit = json.loads((run / CAMERA_DIR / "fit.json").read_text())
    _add_component(folder, "camera_estimator", run / CAMERA_DIR, {"camera_prior_weight": prior_weight}, "camera", fit,
                   {"camera_estimator": True, "camera_steps": fit["config"]["steps"],
                    "camera_warmup": fit["config"].get("warmup", 0), "camera_seed": fit["config"]["seed"],
                    "camera_prior_weight": prior_weight})


def _add_component(folder: Path, name: str, trained: Path, options: dict[str, Any], summary_key: str,
                   fit: dict[str, Any], recipe: dict[str, Any]) -> None:
    """A component trained apart from the DiT into an exported model folder: its weights (float16), its entry
    and pipeline options in model_index.json, its fit and the recipe settings that made it in training_config.json."""
    from ..loading import load_component, save_component
    from .train import EXPORT_DTYPE

    component = load_component(trained).to(EXPORT_DTYPE)
    save_component(component, folder / name)
    _record_in_folder(folder, {name: [type(component).__module__, type(component).__name__]}, options, summary_key,
                      fit, recipe)


def _record_in_folder(folder: Path, entries: dict[str, Any], options: dict[str, Any], summary_key: str,
                      summary: dict[str, Any], recipe: dict[str, Any]) -> None:
    """What a stage added to an exported model folder, written down there: component `entries` and pipeline
    `options` in model_index.json; its `summary` and the recipe settings that made it in training_config.json."""
    from ..loading import MODEL_INDEX
    from ..pipeline import OPTIONS_KEY
    from .train import CONFIG_FILE

    index_path = folder / MODEL_INDEX
    index = json.loads(index_path.read_text())
    index.update(entries)
    index[OPTIONS_KEY].update(options)
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    record_path = folder / CONFIG_FILE
    record = json.loads(record_path.read_text())
    record[summary_key] = summary
    if record.get("recipe") is not None:  # the record says how the whole folder was made
        record["recipe"].update(recipe)
    record_path.write_text(json.dumps(record, indent=2) + "\n")


def make_pose_head_data(run: Path, cfg: RecipeConfig) -> None:
    """The pose head's extra scenes (`make-data --props varied`) and their shards, without the shape grids
    the head does not read."""
    folder = run / POSE_HEAD_DIR
    _render(folder / "cases", cfg.pose_head_scenes, cfg.pose_head_seed, "varied", cfg)
    _make_shards(folder / "cases", folder / "data", cfg.pose_head_scenes, cfg.pose_head_seed, cfg, grids=False)


def train_pose_head_stage(run: Path, cfg: RecipeConfig, model: Path) -> None:
    """A pose head on the frozen condition encoder of the model folder `model` (training/pose_head.py), trained on
    the DiT's scenes and the extra ones."""
    from .pose_head import PoseHeadTrainConfig, train_pose_head

    train_pose_head(model, [run / "data", run / POSE_HEAD_DIR / "data"], run / POSE_HEAD_DIR / "head",
                    PoseHeadTrainConfig(steps=cfg.pose_head_steps, seed=cfg.seed))


def export_pose_head(run: Path, folder: Path, cfg: RecipeConfig) -> None:
    """Add RUN/pose-head/head to a model folder as its `pose_head`, blended into the sampled poses by
    `cfg.pose_head_blend`: a model folder gains a head without its denoiser being trained again."""
    from .pose_head import FIT_FILE

    trained = run / POSE_HEAD_DIR / "head"
    settings = ("pose_head_scenes", "pose_head_seed", "pose_head_steps", "pose_head_blend")
    _add_component(folder, "pose_head", trained, {"pose_head_blend": cfg.pose_head_blend}, "pose_head",
                   json.loads((trained / FIT_FILE).read_text()), {k: getattr(cfg, k) for k in settings})


def dit_config(run: Path, cfg: RecipeConfig) -> "TrainConfig":
    from ..models.dit import default_mi_blocks
    from .train import TrainConfig

    blocks = default_mi_blocks(recipe_preset(cfg).transformer.num_layers, cfg.mi_blocks)
    return TrainConfig(stage="codec-dit", out=str(run), data=str(run / "data"), codec=str(run / "codec"), seed=cfg.seed,
                       mi_blocks=blocks,
                       steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup=cfg.warmup, ema=cfg.ema,
                       mirror=cfg.mirror, pose_weight=cfg.pose_weight, camera_weight=cfg.camera_weight,
                       pose_head_weight=cfg.pose_head_weight,
                       condition_extras=cfg.condition_extras,
                       attention=cfg.attention, cpu_bf16=cfg.cpu_bf16,
                       cfg_drop=cfg.cfg_drop, single_fraction=cfg.single_fraction,
                       sample_steps=cfg.sample_steps, guidance_scale=cfg.guidance_scale,
                       checkpoint_every=cfg.checkpoint_every, log_every=25, device="cpu")


def evaluate(run: Path, cfg: RecipeConfig, model: Path) -> None:
    from ..evaluation import evaluate as evaluation
    from ..evaluation import predict

    cases = Path(cfg.benchmark) if cfg.benchmark else Path(__file__).resolve().parents[3].parent / "shared" / "benchmark" / "dev"
    if not cases.is_dir():
        print(f"recipe: no benchmark cases at {cases}: evaluation skipped", file=sys.stderr)
        return
    pred = run / "eval" / "pred"
    predict.main(["--cases", str(cases), "--out", str(pred), "--model", str(model), "--seed", "0"])
    evaluation.main(["--cases", str(cases), "--pred", str(pred), "--out", str(run / "eval" / "metrics.json"),
                     "--workers", str(cfg.workers)])


def run_recipe(run: Path, cfg: RecipeConfig) -> int:
    from ..pipeline import shipped_model_path
    from .train import export_codec_model, latest_checkpoint, run_stage

    run.mkdir(parents=True, exist_ok=True)
    saved = run / RECIPE_FILE
    if saved.exists():
        previous = saved_recipe(saved)
        if training_settings(previous) != training_settings(cfg):
            print(f"recipe: {saved} holds other training settings; resuming with those (choose a new --out to "
                  "change them)", file=sys.stderr)
        cfg = replace(previous, **{name: getattr(cfg, name) for name in OUTPUT_SETTINGS})
    if cfg.pose_head_weight > 0 and cfg.pose_head_scenes > 0:
        raise SystemExit("--pose-head-weight trains a pose head with the DiT, --pose-head-scenes one after it on the "
                         "frozen encoder: choose one (--pose-head-scenes 0 for the first)")
    saved.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    torch.set_num_threads(cfg.threads)
    stages: list[tuple[str, bool, Any]] = [
        ("cases", _rendered(run / "cases") >= cfg.cases, render_cases),
        ("data", _shards_complete(run / "data", cfg.cases, cfg), make_scene_data),
        ("codec", (run / "codec" / LATENTS_FILE).exists(), fit_shape_codec),
        ("library", not cfg.library_objects or (run / "codec" / LIBRARY_FILE).exists(), make_shape_library),
        ("pose-data", _pose_data_done(run, cfg), make_pose_head_data),
        ("camera", not cfg.camera_estimator or (run / CAMERA_DIR / "fit.json").exists(), train_camera_stage),
    ]
    if cfg.attention == "scene_context":
        from .train import BRANCH_LATENTS_FILE

        stages.append(("branch", (run / "codec" / BRANCH_LATENTS_FILE).exists(), make_branch_data))
    for name, done, stage in stages:
        if not done:
            _run_stage(run, name, partial(stage, run, cfg))
    dit = dit_config(run, cfg)
    checkpoint = latest_checkpoint(dit.stage_dir)
    finished = checkpoint is not None and int(checkpoint.stem.split("-")[1]) >= cfg.steps
    if not finished:
        print("recipe: stage dit", file=sys.stderr)
        start = time.perf_counter()
        code = run_stage(dit, resume=checkpoint is not None)
        _stage_done(run, "dit", time.perf_counter() - start)
        if code != 0:
            return code
    shipped = "default-sca" if cfg.attention == "scene_context" else "default"
    model = Path(cfg.export) if cfg.export else shipped_model_path(shipped)
    start = time.perf_counter()
    # the scene-context model, shipped beside the default one, reads the same codec from it when they are equal
    share = shipped_model_path("default") if shipped == "default-sca" and not cfg.export else None
    export_codec_model(run, model, recipe=cfg.to_dict(), share_codec_with=share)
    if cfg.camera_estimator:
        export_camera_estimator(run, model, cfg.camera_prior_weight)
    _stage_done(run, "export", time.perf_counter() - start)
    if cfg.pose_head_scenes:
        add_pose_head(run, cfg, model)
    print(f"recipe: model written to {model}", file=sys.stderr)
    if cfg.evaluate:
        start = time.perf_counter()
        evaluate(run, cfg, model)
        _stage_done(run, "eval", time.perf_counter() - start)
    return 0


def add_pose_head(run: Path, cfg: RecipeConfig, model: Path) -> None:
    """The pose-data and pose-head stages (each when not done yet) and the head's export into `model`.

    The head is trained once, on the features of the first export's encoder; a resumed run exports the same
    DiT again, so the head fits every later export too. A finished model folder gains a head this way without
    its DiT's checkpoints (docs/model-card.md says how the shipped one did)."""
    from .pose_head import FIT_FILE

    if not _pose_data_done(run, cfg):
        _run_stage(run, "pose-data", partial(make_pose_head_data, run, cfg))
    if not (run / POSE_HEAD_DIR / "head" / FIT_FILE).is_file():
        _run_stage(run, "pose-head", partial(train_pose_head_stage, run, cfg, model))
    export_pose_head(run, model, cfg)


def _run_stage(run: Path, name: str, stage: Any) -> None:
    print(f"recipe: stage {name}", file=sys.stderr)
    start = time.perf_counter()
    stage()
    _stage_done(run, name, time.perf_counter() - start)


def _pose_data_done(run: Path, cfg: RecipeConfig) -> bool:
    extra = run / POSE_HEAD_DIR  # with no extra scenes, nothing to do
    return (_rendered(extra / "cases") >= cfg.pose_head_scenes
            and _shards_complete(extra / "data", cfg.pose_head_scenes, cfg))


def _rendered(cases: Path) -> int:
    index = cases / "INDEX.json"
    return json.loads(index.read_text())["n_cases"] if index.is_file() else 0


def _shards_complete(data: Path, count: int, cfg: RecipeConfig) -> bool:
    return len(list(data.glob("scene-*.npz"))) >= -(-count // cfg.shard_size)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scenewright train --recipe default", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="run folder (resumable)")
    defaults = RecipeConfig()
    for f in fields(RecipeConfig):
        value = getattr(defaults, f.name)
        parser.add_argument("--" + f.name.replace("_", "-"), type=on_off if isinstance(value, bool) else type(value),
                            default=value, help=f"{f.metadata['help']} (default: {value!r})")
    args = parser.parse_args(argv)
    values = {k: v for k, v in vars(args).items() if k != "out"}
    if values["attention"] not in ("multi_instance", "scene_context"):
        parser.error("--attention must be multi_instance or scene_context")
    if not values["condition_extras"] and values["camera_weight"]:
        parser.error("--camera-weight trains the condition encoder's camera head: add --condition-extras on")
    if values["camera_prior_weight"] and not (values["camera_estimator"] or values["camera_weight"]):
        parser.error(f"--camera-prior-weight {values['camera_prior_weight']} needs a camera estimate: --camera-estimator "
                     "on, or --condition-extras on with --camera-weight; or --camera-prior-weight 0")
    return run_recipe(args.out, RecipeConfig.from_dict(values))
