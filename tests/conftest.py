"""Shared fixtures: paths to the repo, and to ../shared when it is there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("SCENEWRIGHT_SHARED", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared (benchmark, goldens, examples); tests that need it skip without it."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DIR}")
    return SHARED_DIR


@pytest.fixture(scope="session")
def golden_dir(shared_dir: Path) -> Path:
    path = shared_dir / "golden" / "midi3d"
    if not path.is_dir():
        pytest.skip(f"MIDI-3D goldens not found at {path}")
    return path


def make_tiny_codec_model(folder: Path, seed: int = 0, condition_extras: bool = False,
                          camera_estimator: bool = False) -> Path:
    """A model folder of the default model's kind with random DiT and condition-encoder weights and a
    small shape codec fitted on procedural shapes: real meshes, real plumbing, meaningless placement.
    `condition_extras`: the condition encoder's mask geometry, coordinates and camera head on;
    `camera_estimator`: a (random) camera estimator component."""
    import dataclasses

    import numpy as np

    from scenewright.data.shapes import make_shape
    from scenewright.loading import save_pipeline
    from scenewright.models.presets import build_codec_model, codec_model_preset
    from scenewright.models.shape_codec import BoxPose, ShapeCodecConfig
    from scenewright.pipeline import OPTIONS_KEY, PipelineOptions
    from scenewright.training.shape_grids import fit_codec, sdf_grid

    rng = np.random.default_rng(seed)
    grids, poses = [], []
    for k in range(12):
        mesh = make_shape(["box", "table", "chair", "sphere", "lamp", "cabinet"][k % 6], rng).mesh
        low, high = mesh.bounds
        grids.append(sdf_grid((np.asarray(mesh.vertices) - (low + high) / 2) / (high - low), mesh.faces, 16, 0.1, rng).ravel())
        poses.append(BoxPose(rng.normal(size=3) * 0.3, np.exp(rng.normal(size=3) * 0.2) * 0.4, 0.1 * k - 0.5).to_vector())
    codec_config = ShapeCodecConfig(grid_resolution=16, num_components=8, tokens=2, channels=8)
    preset = codec_model_preset(codec_config, condition_extras)
    preset = dataclasses.replace(preset, transformer=dataclasses.replace(
        preset.transformer, width=64, num_layers=5, num_attention_heads=4))
    components = build_codec_model(preset, seed=seed)
    components["shape_codec"] = fit_codec(np.stack(grids), np.stack(poses), codec_config)
    if camera_estimator:
        from scenewright.models.camera_estimator import CameraEstimator, CameraEstimatorConfig

        components["camera_estimator"] = CameraEstimator(CameraEstimatorConfig(width=8, hidden=16))
    options = PipelineOptions(frame="view", num_tokens=2, steps=4, guidance_scale=3.0, mi_blocks=[1, 2, 3],
                              mesh_resolution=16, refine_poses=True)
    save_pipeline(components, folder, extra_index={OPTIONS_KEY: options.to_dict()})
    return folder


@pytest.fixture(scope="session")
def tiny_codec_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_codec_model(tmp_path_factory.mktemp("models") / "tiny-codec")


@pytest.fixture(scope="session")
def tiny_codec_model_with_extras(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_codec_model(tmp_path_factory.mktemp("models") / "tiny-codec-extras", condition_extras=True)


@pytest.fixture(scope="session")
def tiny_codec_model_with_camera_estimator(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_codec_model(tmp_path_factory.mktemp("models") / "tiny-codec-camera", camera_estimator=True)
