"""`scenewright train --recipe default` at a tiny size: every stage, resumable, and the export generates.

Cases come from the training conftest (flat-shaded, no Blender); the recipe finds them already
rendered, as it does after an interrupted run. Both attention layouts: multi-instance and I-Scene's
scene context with its scene branch.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scenewright.masks import instances_from_seg
from scenewright.pipeline import ScenePipeline
from scenewright.protocol import GenerationSettings
from scenewright.training.recipe import RecipeConfig, run_recipe, saved_recipe

from casemaker import write_case

CASES = 12


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder whose cases stage is done: case_000000.. with matrix_world per instance, and an INDEX."""
    cases = tmp_path_factory.mktemp("recipe") / "cases"
    for index in range(CASES):
        write_case(cases / f"case_{index:06d}", 2 + index % 3, first_seed=7 * index)
    (cases / "INDEX.json").write_text(json.dumps({"n_cases": CASES}))
    return cases


def _config(tmp_path: Path, **changes) -> RecipeConfig:
    return RecipeConfig(cases=CASES, workers=1, shard_size=5, fit_objects=40, grid_resolution=16, num_components=16,
                        steps=4, batch_size=6, warmup=2, checkpoint_every=2, threads=1, export=str(tmp_path / "model"),
                        camera_steps=3, evaluate=False, **{"pose_head_scenes": 0, "library_objects": 1, **changes})


# the condition encoder's extras with its camera head as the only camera estimate
EXTRAS = {"condition_extras": True, "camera_weight": 0.2, "camera_prior_weight": 10.0, "camera_estimator": False}


# a pose regression head beside the DiT: trained and checkpointed with it, exported with its EMA weights
POSE_HEAD = {"pose_head_weight": 1.0}
# a pose head after the DiT, on its frozen encoder, with 6 extra scenes (found rendered, as the DiT's)
FROZEN_POSE_HEAD = {"pose_head_scenes": 6, "pose_head_steps": 5, "pose_head_blend": 0.4}


@pytest.mark.parametrize("attention, extras", [("multi_instance", {}), ("scene_context", {}), ("multi_instance", EXTRAS),
                                               ("multi_instance", POSE_HEAD), ("multi_instance", FROZEN_POSE_HEAD)])
def test_recipe_runs_every_stage_and_the_export_generates(rendered, tmp_path, attention, extras):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(rendered, run / "cases")
    cfg = _config(tmp_path, attention=attention, **extras)
    if cfg.pose_head_scenes:
        shutil.copytree(rendered, run / "pose-head" / "cases")
    assert run_recipe(run, cfg) == 0

    assert len(list((run / "data").glob("scene-*.npz"))) == 3  # 12 cases in shards of 5
    fit = json.loads((run / "codec" / "fit.json").read_text())
    visible = sum(len(instances_from_seg(Image.open(case / "seg.png"))) for case in sorted(rendered.glob("case_*")))
    assert fit["objects"] == visible and fit["fit_objects"] == 2 * min(cfg.fit_objects, visible)
    assert (run / "codec-dit" / "checkpoints").is_dir() and json.loads((run / "stages.json").read_text())["dit"] > 0
    assert (len(list((run / "data").glob("branch-*.npz"))) == 3) == (attention == "scene_context")
    exported = json.loads((tmp_path / "model" / "training_config.json").read_text())
    assert exported["recipe"]["attention"] == attention and exported["dit_step"] == 4
    index = json.loads((tmp_path / "model" / "model_index.json").read_text())
    assert index["_scenewright"]["attention"] == attention and index["_scenewright"]["refine_poses"]
    assert index["_scenewright"]["camera_prior_weight"] == cfg.camera_prior_weight
    assert index["_scenewright"]["candidates"] == cfg.candidates
    assert index["_scenewright"]["mirrored_share"] == cfg.mirrored_share
    codec_config = json.loads((tmp_path / "model" / "shape_codec" / "config.json").read_text())
    library = json.loads((run / "codec" / "library.json").read_text())["shapes"]
    assert codec_config["library_size"] == library and 16 <= library <= 16 * 8  # duplicates left out
    assert index["_scenewright"]["shape_alternatives"] == cfg.shape_alternatives > 0

    assert ("camera_estimator" in index) == cfg.camera_estimator == (run / "camera" / "fit.json").is_file()
    if cfg.camera_estimator:
        # every rendered scene: the DiT's and the pose head's
        assert exported["camera"]["scenes"] + exported["camera"]["holdout"] == CASES + cfg.pose_head_scenes

    logged = [json.loads(line) for line in (run / "codec-dit" / "log.jsonl").read_text().splitlines()]
    assert logged and all(("loss_pose_head" in record) == (cfg.pose_head_weight > 0) for record in logged)
    if cfg.pose_head_weight > 0:
        import torch

        from scenewright.training.train import latest_checkpoint

        state = torch.load(latest_checkpoint(run / "codec-dit"), weights_only=False)
        assert list(state["models"]) == ["transformer", "condition_encoder", "pose_head"]

    assert ("pose_head" in index) == (cfg.pose_head_weight > 0 or cfg.pose_head_scenes > 0)
    if cfg.pose_head_scenes:
        _check_frozen_pose_head(run, tmp_path / "model", cfg)

    pipe = ScenePipeline.from_pretrained(tmp_path / "model", device="cpu")
    assert (pipe.pose_head is not None) == ("pose_head" in index)
    if cfg.pose_head_weight > 0:  # the EMA entries are the parameters' in order: the head's come last
        head = list(pipe.pose_head.parameters())
        assert all(torch.allclose(p.float(), v.float(), atol=2e-4) for p, v in zip(head, state["ema"][-len(head):]))
    assert (pipe.conditioner.camera_head is not None) == cfg.condition_extras
    assert (type(pipe.camera_estimator).__name__ == "CameraEstimator") == cfg.camera_estimator
    case = rendered / "case_000001"
    seg = Image.open(case / "seg.png")
    result = pipe.generate(Image.open(case / "image.png"), seg, GenerationSettings(steps=3))
    assert [i.id for i in result.instances] == [m.id for m in instances_from_seg(seg)]
    assert any(not i.empty for i in result.instances) and result.camera is not None
    assert all(i.color is not None for i in result.instances)

    # resumable: a second run finds every stage done and changes nothing it made
    before = {p: p.stat().st_mtime_ns for p in (run / "data").glob("*.npz")}
    assert run_recipe(run, cfg) == 0
    assert {p: p.stat().st_mtime_ns for p in (run / "data").glob("*.npz")} == before

    # a resumed run may send its model elsewhere; what it trains stays what it started with
    elsewhere = tmp_path / "model-2"
    assert run_recipe(run, replace(cfg, export=str(elsewhere), steps=8)) == 0
    again = json.loads((elsewhere / "training_config.json").read_text())
    assert again["recipe"]["export"] == str(elsewhere) and again["recipe"]["steps"] == 4 and again["dit_step"] == 4
    assert json.loads((run / "recipe.json").read_text())["export"] == str(elsewhere)
    if cfg.pose_head_scenes:  # the head, trained once, goes with every export
        _check_frozen_pose_head(run, elsewhere, cfg)

    if attention == "multi_instance" and not extras:  # the DiT step's benchmark runs on such a folder, writing nothing in it
        from scenewright.bench.run import main as bench_main

        files = sorted(run.rglob("*"))
        out = tmp_path / "step.json"
        assert bench_main(["train-step", str(run), "--steps", "2", "--warmup", "1", "--threads", "1", "--json", str(out)]) == 0
        timing = json.loads(out.read_text())
        assert timing["seconds_per_step"] > 0 and timing["batch_size"] == cfg.batch_size and timing["recipe_steps"] == 4
        assert sorted(run.rglob("*")) == files


def _check_frozen_pose_head(run: Path, model: Path, cfg: RecipeConfig) -> None:
    import torch

    from scenewright.loading import load_component
    from scenewright.training import data as D

    shards = sorted((run / "pose-head" / "data").glob("scene-*.npz"))
    first = D.read_shard(shards[0])
    assert len(shards) == 2 and "grids" not in first and "poses" in first
    summary = json.loads((model / "training_config.json").read_text())
    fit = summary["pose_head"]
    assert fit["scenes"] + fit["held_out"] == CASES + cfg.pose_head_scenes and fit["config"]["steps"] == 5
    assert np.isfinite(fit["held_out_mse"])
    assert summary["recipe"]["pose_head_scenes"] == cfg.pose_head_scenes
    index = json.loads((model / "model_index.json").read_text())
    assert index["_scenewright"]["pose_head_blend"] == cfg.pose_head_blend
    trained, exported = load_component(run / "pose-head" / "head"), load_component(model / "pose_head")
    assert all(torch.equal(a.half(), b) for a, b in zip(trained.state_dict().values(), exported.state_dict().values()))


def test_a_pose_head_with_the_dit_or_after_it_not_both(tmp_path):
    with pytest.raises(SystemExit, match="choose one"):
        run_recipe(tmp_path / "run", _config(tmp_path, pose_head_weight=1.0, pose_head_scenes=10))


def test_a_run_started_before_the_frozen_pose_head_resumes_without_it(rendered, tmp_path):
    """recipe.json written before --pose-head-scenes existed: the run resumes as it was made, head beside the DiT."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(rendered, run / "cases")
    cfg = _config(tmp_path, pose_head_weight=1.0, camera_estimator=False, camera_prior_weight=0.0)
    assert run_recipe(run, cfg) == 0
    saved = json.loads((run / "recipe.json").read_text())
    for name in ("pose_head_scenes", "pose_head_seed", "pose_head_steps", "pose_head_blend"):
        del saved[name]
    (run / "recipe.json").write_text(json.dumps(saved))
    assert run_recipe(run, RecipeConfig(export=cfg.export, evaluate=False)) == 0  # the defaults ask for a head too
    assert json.loads((run / "recipe.json").read_text())["pose_head_scenes"] == 0
    assert not (run / "pose-head").exists()


def test_a_library_needs_objects(tmp_path):
    from scenewright.training.recipe import add_shape_library

    with pytest.raises(ValueError, match="library_objects is 0"):
        add_shape_library(tmp_path, RecipeConfig(library_objects=0))


def test_num_components_must_fill_tokens():
    from scenewright.training.recipe import recipe_preset

    with pytest.raises(SystemExit, match="multiple of 8"):
        recipe_preset(RecipeConfig(num_components=12))


def test_codec_latents_decode_to_the_cases_objects(rendered, tmp_path):
    """The data and codec stages' latents, decoded, give each object back in its place in the scene."""
    from scenewright.evaluation.cases import load_case
    from scenewright.evaluation.metrics import box_iou
    from scenewright.loading import load_component
    from scenewright.training import data as D
    from scenewright.training.data import SceneNormalization
    from scenewright.training.recipe import fit_shape_codec, make_scene_data

    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(rendered, run / "cases")
    cfg = _config(tmp_path)
    make_scene_data(run, cfg)
    fit_shape_codec(run, cfg)
    codec = load_component(run / "codec")
    with np.load(run / "codec" / "latents.npz") as cached:
        latents = cached["latents"]
    data = D.load_shards(run / "data", "scene")
    import torch

    meshes = codec.meshes(torch.from_numpy(latents[:5]))
    case = load_case(rendered / "case_000000")
    visible = [inst for inst in case.instances if (case.seg == inst.id).any()]
    norm = SceneNormalization.fit([inst.mesh[0] for inst in visible])
    for inst, mesh in zip(visible, meshes):
        truth = norm.apply(inst.mesh[0])
        box = (truth.min(axis=0), truth.max(axis=0))
        assert mesh is not None and box_iou((mesh[0].min(axis=0), mesh[0].max(axis=0)), box) > 0.8
    assert int(data["num_instances"][0]) == len(visible)


def test_a_camera_prior_without_a_camera_estimate_is_refused(capsys):
    """The recipe's CLI refuses settings that would export a prior weight with nothing to estimate the camera."""
    from scenewright.training.recipe import main

    with pytest.raises(SystemExit):
        main(["--out", "unused", "--camera-estimator", "off"])
    assert "--camera-prior-weight 10.0 needs a camera estimate" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--out", "unused", "--camera-weight", "0.2"])
    assert "add --condition-extras on" in capsys.readouterr().err


def test_a_recipe_saved_before_the_camera_settings_resumes_as_it_was_made(tmp_path):
    old = RecipeConfig(seed=3).to_dict()
    del old["camera_seed"], old["camera_warmup"]  # the camera estimator trained with the recipe's seed, no warmup
    (tmp_path / "old.json").write_text(json.dumps(old))
    resumed = saved_recipe(tmp_path / "old.json")
    assert (resumed.camera_seed, resumed.camera_warmup, resumed.seed) == (3, 0, 3)

    (tmp_path / "new.json").write_text(json.dumps(RecipeConfig(seed=3, camera_seed=5).to_dict()))
    assert saved_recipe(tmp_path / "new.json") == RecipeConfig(seed=3, camera_seed=5)
