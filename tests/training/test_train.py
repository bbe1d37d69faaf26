"""Both training stages at the tiny size: losses fall, resume is bit-identical, the export loads and generates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scenewright.loading import load_component
from scenewright.models.presets import build_components
from scenewright.pipeline import ScenePipeline
from scenewright.protocol import GenerationSettings
from scenewright.training import data as D
from scenewright.training.objectives import SIGN_SCALE, BatchRandom, VAEObjective, encode_means, standardize_latents
from scenewright.training.train import TrainConfig, build_trainer, export_model, make_dit_data, run_stage

SMALL = D.SampleConfig(surface_points=512, near_points=512, uniform_points=256, dit_surface_points=256)
TINY = dict(preset="tiny", num_tokens=32, device="cpu", seed=0, warmup=2, lr=1e-3, log_every=1, sample=SMALL.to_dict())


@pytest.fixture(scope="module")
def vae_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("vae-data")
    D.write_shard(folder / "vae-00000.npz", [D.vae_examples(seed, SMALL) for seed in (5, 3)], {"kind": "vae"})
    return folder


@pytest.fixture(scope="module")
def dit_data(case_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dit-data")
    make_dit_data(TrainConfig(stage="dit-data", out=str(folder), cases=str(case_dir), shard_size=2, **TINY))
    return folder


@pytest.fixture(scope="module")
def vae_run(vae_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(stage="vae", out=str(run), data=str(vae_data), steps=20, batch_size=3, query_points=512, **{**TINY, "lr": 2e-3})
    assert run_stage(cfg) == 0
    return run


def _dit_config(run: Path, dit_data: Path, vae_run: Path, **overrides: object) -> TrainConfig:
    settings = dict(stage="dit", out=str(run), data=str(dit_data), vae=str(vae_run / "vae" / "final"), steps=6,
                    batch_size=4, single_fraction=0.3, **TINY)
    settings.update(overrides)
    return TrainConfig(**settings)


def _fixed_loss(objective, draws: int = 6) -> float:
    """Mean loss over fixed batches (fixed generators), without touching the training generators."""
    for module in objective.modules.values():
        module.eval()
    with torch.no_grad():
        return float(np.mean([objective.loss(BatchRandom.seeded(100 + i), torch.device("cpu"))[0].item()
                              for i in range(draws)]))


def test_vae_stage_learns_the_shapes(vae_run: Path, vae_data: Path) -> None:
    """The trained (and standardised) VAE reconstructs signed distances better than its random initialisation."""
    data = D.load_shards(vae_data, "vae")
    surface = torch.from_numpy(data["surface"].astype(np.float32))
    points = torch.from_numpy(data["points"])
    sdf = torch.from_numpy(data["sdf"].astype(np.float32))

    def error(vae) -> float:
        with torch.no_grad():
            mean, _ = vae.encode(surface, 32, seed=7)
            return (vae.decode(mean, points) - sdf).abs().mean().item()

    trained = load_component(vae_run / "vae" / "final")
    untrained = build_components("tiny", seed=0)["vae"]
    assert error(trained) < 0.9 * error(untrained)
    # the folded standardisation gives the training shapes' latents zero mean and unit variance per channel
    means = encode_means(trained, data["surface"], 32, torch.device("cpu")).reshape(-1, 8)
    torch.testing.assert_close(means.mean(0), torch.zeros(8), atol=1e-4, rtol=0)
    torch.testing.assert_close(means.std(0), torch.ones(8), atol=1e-4, rtol=0)
    summary = json.loads((vae_run / "vae" / "final" / "training_config.json").read_text())
    assert summary["step"] == 20 and summary["config"]["preset"] == "tiny"


def test_standardisation_keeps_the_decoded_field() -> None:
    vae = build_components("tiny", seed=1)["vae"].eval()
    surface = torch.randn(3, 256, 6)
    points = torch.rand(3, 200, 3) * 2 - 1
    with torch.no_grad():
        before = vae.decode(vae.encode(surface, 16, seed=0)[0], points)
        standardize_latents(vae, encode_means(vae, surface.numpy(), 16, torch.device("cpu")))
        mean, _ = vae.encode(surface, 16, seed=0)
        after = vae.decode(mean, points)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    assert abs(mean.std().item() - 1.0) < 0.05


def test_vae_objective_truncates_targets_weighs_the_sign_and_subsamples_the_encoder_input(vae_data: Path) -> None:
    """With a decoder that outputs a constant c, the loss terms have closed forms over the drawn queries."""
    data = D.load_shards(vae_data, "vae")
    vae = build_components("tiny", seed=0)["vae"]
    c = 0.02
    with torch.no_grad():
        vae.decoder.proj_out.weight.zero_()
        vae.decoder.proj_out.bias.fill_(-c)  # the field is minus the projection
    seen: list[int] = []
    vae.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[1].shape[1]))
    objective = VAEObjective(vae, data, batch_size=2, num_tokens=16, query_points=300, kl_weight=0.0,
                             truncation=0.01, sign_weight=0.5, encoder_points=200)
    loss, stats = objective.loss(BatchRandom.seeded(3), torch.device("cpu"))
    # the same draws as the objective: rows, then one query choice per row
    rand = BatchRandom.seeded(3).numpy
    rows = rand.choice(len(data["surface"]), 2, replace=False)
    picks = np.stack([rand.choice(data["points"].shape[1], 300, replace=False) for _ in rows])
    sdf = torch.from_numpy(np.take_along_axis(data["sdf"][rows], picks, axis=1).astype(np.float32))
    recon = (c - sdf.clamp(-0.01, 0.01)).abs().mean()
    sign = torch.nn.functional.binary_cross_entropy_with_logits(torch.full_like(sdf, -c / SIGN_SCALE), (sdf < 0).float())
    assert seen == [200]
    assert stats["recon"] == pytest.approx(recon.item(), rel=1e-5)
    assert stats["sign_bce"] == pytest.approx(sign.item(), rel=1e-5)
    assert loss.item() == pytest.approx(recon.item() + 0.5 * sign.item(), rel=1e-5)
    assert stats["sign_accuracy"] == pytest.approx((sdf >= 0).float().mean().item())


def test_dit_stage_lowers_the_loss(vae_run: Path, dit_data: Path, tmp_path: Path) -> None:
    cfg = _dit_config(tmp_path, dit_data, vae_run, steps=25)
    (tmp_path / "dit").mkdir()
    trainer = build_trainer(cfg)
    before = _fixed_loss(trainer.objective)
    assert trainer.train() == "done"
    assert _fixed_loss(trainer.objective) < 0.8 * before
    groups = {json.loads(line)["instances"] for line in (tmp_path / "dit" / "log.jsonl").read_text().splitlines()}
    assert groups == {1.0, 2.0, 3.0}  # single-object batches and scenes of each size were drawn


def test_resume_continues_bit_identically(vae_run: Path, dit_data: Path, tmp_path: Path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_stage(_dit_config(straight, dit_data, vae_run)) == 0
    assert run_stage(_dit_config(resumed, dit_data, vae_run, stop_at=3)) == 0
    assert run_stage(_dit_config(resumed, dit_data, vae_run)) == 2  # existing checkpoints need --resume
    assert run_stage(_dit_config(resumed, dit_data, vae_run), resume=True) == 0

    def log(run: Path) -> list[tuple[int, float, float]]:
        lines = (run / "dit" / "log.jsonl").read_text().splitlines()
        return [(r["step"], r["loss"], r["grad_norm"]) for r in map(json.loads, lines)]

    assert log(resumed) == log(straight) and len(log(straight)) == 6
    a = torch.load(straight / "dit" / "checkpoints" / "step-00000006.pt", weights_only=False)["models"]
    b = torch.load(resumed / "dit" / "checkpoints" / "step-00000006.pt", weights_only=False)["models"]
    for name in a:
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), (name, key)


def test_sigint_checkpoints_and_resume_continues(vae_data: Path, tmp_path: Path) -> None:
    args = [sys.executable, "-m", "scenewright", "train", "--stage", "vae", "--out", str(tmp_path), "--data", str(vae_data),
            "--preset", "tiny", "--num-tokens", "32", "--device", "cpu", "--batch-size", "2", "--query-points", "256",
            "--steps", "100000", "--log-every", "1", "--checkpoint-every", "100000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    log = tmp_path / "vae" / "log.jsonl"
    deadline = time.monotonic() + 120
    while not (log.exists() and log.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    checkpoints = sorted((tmp_path / "vae" / "checkpoints").glob("step-*.pt"))
    assert len(checkpoints) == 1
    step = torch.load(checkpoints[0], weights_only=False)["step"]
    assert step >= 2 and step == len(log.read_text().splitlines())
    more = subprocess.run(args + ["--resume", "--stop-at", str(step + 2)], capture_output=True, text=True, timeout=120,
                          env=env)
    assert more.returncode == 0, more.stdout + more.stderr
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == list(range(1, step + 3))
    assert (tmp_path / "vae" / "checkpoints" / f"step-{step + 2:08d}.pt").is_file()


def test_export_loads_and_generates_a_two_instance_scene(vae_run: Path, dit_data: Path, case_dir: Path,
                                                         tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert run_stage(_dit_config(run, dit_data, vae_run, steps=2, ema=0.9)) == 0
    model = export_model(run, tmp_path / "model")
    index = json.loads((model / "model_index.json").read_text())
    assert index["_scenewright"]["frame"] == "view" and index["_scenewright"]["num_tokens"] == 32
    weights = list(model.glob("*/*.safetensors"))
    assert len(weights) == 4 and sum(p.stat().st_size for p in weights) < 50e6
    pipe = ScenePipeline.from_pretrained(model, device="cpu")
    case = case_dir / "case_000"
    seg = np.asarray(Image.open(case / "seg.png"))
    assert sorted(np.unique(seg)) == [0, 1, 2]
    result = pipe.generate(Image.open(case / "image.png"), seg, GenerationSettings(steps=2, mesh_resolution=32))
    assert [inst.id for inst in result.instances] == [1, 2]
    assert all(not inst.empty and np.isfinite(inst.scene_vertices()).all() for inst in result.instances)
    assert result.frame["native"] == "view"


def test_small_preset_fits_the_shipping_budget() -> None:
    components = build_components("small")
    size = sum(p.numel() * 2 for name in ("transformer", "vae", "image_encoder_1", "image_encoder_2")
               for p in components[name].parameters())  # exported in float16
    assert size < 50e6


def test_dit_stage_refuses_shards_made_for_another_preset(vae_run: Path, dit_data: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="112 px"):
        build_trainer(_dit_config(tmp_path, dit_data, vae_run, preset="small"))
