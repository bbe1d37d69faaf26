"""The model this project ships (backend/scenewright/assets/default-model), loaded offline as a user gets it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scenewright.camera import Camera, render_silhouettes
from scenewright.evaluation.metrics import count_distinct
from scenewright.masks import instances_from_seg
from scenewright.pipeline import ScenePipeline, default_model_path, shipped_model_path
from scenewright.protocol import MAX_INSTANCES, SHIPPED_MODELS, GenerationSettings
from scenewright.training.recipe import RecipeConfig, training_settings

EXAMPLES = Path(__file__).resolve().parents[1] / "backend" / "scenewright" / "assets" / "examples"


@pytest.fixture(scope="module")
def pipe(monkeypatch_module) -> ScenePipeline:
    monkeypatch_module.setenv("HF_HUB_OFFLINE", "1")  # nothing may come from the network
    return ScenePipeline.from_pretrained("default", device="cpu")


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def _visible_ious(meshes, masks, camera) -> list[float]:
    """IoU of each silhouette and its mask, silhouette pixels on another instance's mask left out (it may be
    hidden there: masks are occluded, silhouettes are not)."""
    silhouettes = render_silhouettes(meshes, camera)
    out = []
    for k, (silhouette, mask) in enumerate(zip(silhouettes, masks)):
        others = np.any([m for j, m in enumerate(masks) if j != k], axis=0)
        out.append(float((silhouette & mask).sum() / (mask | (silhouette & ~others)).sum()))
    return out


def test_the_shipped_models_are_in_the_package_within_their_budget():
    """Every shipped model, fully trained; all their weights together (a shared codec counted once) <= 50 MB.
    The default model was made by the recipe's defaults, so `scenewright train --recipe default` remakes it."""
    for name in SHIPPED_MODELS:
        folder = shipped_model_path(name)
        index = json.loads((folder / "model_index.json").read_text())
        assert {"transformer", "condition_encoder", "shape_codec", "scheduler"} <= set(index)
        recipe = json.loads((folder / "training_config.json").read_text())
        assert recipe["recipe"] is not None and recipe["dit_step"] == recipe["recipe"]["steps"]
    made_by = json.loads((shipped_model_path("default") / "training_config.json").read_text())["recipe"]
    assert training_settings(RecipeConfig.from_dict(made_by)) == training_settings(RecipeConfig())
    index = json.loads((shipped_model_path("default") / "model_index.json").read_text())
    assert ("camera_estimator" in index) == RecipeConfig().camera_estimator
    assert index["_scenewright"]["camera_prior_weight"] == RecipeConfig().camera_prior_weight
    assert ("pose_head" in index) == (RecipeConfig().pose_head_scenes > 0)
    assert index["_scenewright"]["pose_head_blend"] == RecipeConfig().pose_head_blend
    assets = default_model_path().parent
    weights = sum(p.stat().st_size for name in SHIPPED_MODELS for p in shipped_model_path(name).rglob("*.safetensors"))
    assert weights <= 50 * 2**20, f"{weights / 2**20:.1f} MB of weights in {assets}"


def test_the_scene_context_model_generates_every_instance(monkeypatch_module):
    """`default-sca` offline on a shipped example; its scene row is not returned as an instance."""
    monkeypatch_module.setenv("HF_HUB_OFFLINE", "1")
    sca = ScenePipeline.from_pretrained("default-sca", device="cpu")
    assert sca.options.attention == "scene_context"
    image, seg = Image.open(EXAMPLES / "desk" / "image.png"), Image.open(EXAMPLES / "desk" / "seg.png")
    result = sca.generate(image, seg, GenerationSettings(seed=0))
    assert [i.id for i in result.instances] == [m.id for m in instances_from_seg(seg)]
    assert all(not i.empty for i in result.instances)


@pytest.mark.shared
def test_the_scene_context_model_on_the_dev_case_whose_decimation_once_failed(shared_dir):
    """dev case_001 with default-sca: a decimation retry asked for more faces than the mesh had (ValueError)."""
    case = shared_dir / "benchmark" / "dev" / "case_001"
    sca = ScenePipeline.from_pretrained("default-sca", device="cpu")
    result = sca.generate(Image.open(case / "image.png"), Image.open(case / "seg.png"), GenerationSettings(seed=0))
    assert len(result.instances) == 5 and all(not i.empty for i in result.instances)


@pytest.mark.parametrize("example", ["desk", "front-behind", "cabinet-support", "sofa-and-lamps"])
def test_shipped_model_places_separate_instances_on_their_masks(pipe, example):
    image, seg = Image.open(EXAMPLES / example / "image.png"), Image.open(EXAMPLES / example / "seg.png")
    instances = instances_from_seg(seg)
    result = pipe.generate(image, seg, GenerationSettings(seed=0))
    assert [i.id for i in result.instances] == [m.id for m in instances]
    assert all(not i.empty for i in result.instances)
    meshes = [(i.scene_vertices().astype(np.float64), i.faces.astype(np.int64)) for i in result.instances]
    assert count_distinct(meshes) == len(meshes)  # separate: no two fused (the benchmark's SSR rule)
    ious = _visible_ious(meshes, [m.mask for m in instances], Camera.from_dict(result.camera))
    assert min(ious) > 0.5, ious
    assert all(len(i.faces) <= pipe.options.max_faces for i in result.instances)


def test_candidates_from_the_mirrored_picture_come_back_where_the_picture_shows_them(pipe, monkeypatch):
    """A candidate scene sampled from the mirror image (PipelineOptions.mirrored_share) is reflected back: its
    instances lie left to right as their masks do, as the picture's own candidate's do, and their surfaces
    face out (a closed mesh's signed volume is positive; a reflection without turning the faces negates it)."""
    monkeypatch.setattr(pipe, "options", dataclasses.replace(pipe.options, mirrored_share=0.5))
    image, seg = Image.open(EXAMPLES / "desk" / "image.png").convert("RGB"), Image.open(EXAMPLES / "desk" / "seg.png")
    instances = instances_from_seg(seg)
    views, _ = pipe.sample_candidates(image, instances, GenerationSettings(seed=0, candidates=2))
    assert [v.mirrored for v in views] == [False, True]
    columns = [np.nonzero(i.mask)[1].mean() for i in instances]
    left, right = int(np.argmin(columns)), int(np.argmax(columns))
    for view in views:
        assert view.meshes[left][0][:, 0].mean() < view.meshes[right][0][:, 0].mean()
        for vertices, faces in view.meshes:
            corners = vertices.astype(np.float64)[faces]
            volume = np.einsum("ij,ij->i", corners[:, 0], np.cross(corners[:, 1], corners[:, 2])).sum() / 6.0
            assert volume > 0
        # the library shapes offered for its samples come back as they do: each in its sample's box
        for (vertices, _), offered in zip(view.meshes, pipe.library_alternatives(view, GenerationSettings(seed=0))):
            assert len(offered) == pipe.options.shape_alternatives
            lo, hi = vertices.min(axis=0), vertices.max(axis=0)
            assert all(np.all(np.abs(v.mean(axis=0) - (lo + hi) / 2) < (hi - lo) / 2) for v, _ in offered)


def test_sixteen_instances_run_though_training_saw_at_most_eight(pipe):
    """The service's limit: a 4 x 4 grid of coloured blocks on a light floor."""
    size, seg = 512, np.zeros((512, 512), np.uint8)
    image = np.full((size, size, 3), 205, np.uint8)
    rng = np.random.default_rng(0)
    for k in range(MAX_INSTANCES):
        row, col = divmod(k, 4)
        top, left = 150 + row * 75, 70 + col * 100 + row * 8
        image[top : top + 50, left : left + 60] = rng.integers(40, 220, 3)
        seg[top : top + 50, left : left + 60] = k + 1
    result = pipe.generate(Image.fromarray(image), Image.fromarray(seg), GenerationSettings(seed=0))
    assert len(result.instances) == MAX_INSTANCES and all(not i.empty for i in result.instances)
