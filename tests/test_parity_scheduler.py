"""RectifiedFlowScheduler against the MIDI-3D reference schedules and steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scenewright.loading import load_component
from scenewright.schedulers.rectified_flow import RectifiedFlowScheduler, RectifiedFlowSchedulerConfig

TABLE_TOL = 1e-6


@pytest.fixture(scope="module")
def cases(golden_dir: Path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in load_file(golden_dir / "scheduler_cases.safetensors").items()}


def _scheduler(golden_dir: Path, shift: int) -> RectifiedFlowScheduler:
    saved = load_component(golden_dir / "tiny-midi-3d" / "scheduler")
    assert saved.config.shift == 1.0
    if shift == 1:
        return saved
    return RectifiedFlowScheduler(RectifiedFlowSchedulerConfig(**{**saved.config.to_dict(), "shift": float(shift)}))


@pytest.mark.parametrize("shift", [1, 3])
@pytest.mark.parametrize("steps", [4, 10, 50])
def test_schedule_tables(golden_dir, cases, shift, steps):
    scheduler = _scheduler(golden_dir, shift)
    scheduler.set_timesteps(steps)
    expected_t = cases[f"shift{shift}_n{steps}_timesteps"]
    expected_s = cases[f"shift{shift}_n{steps}_sigmas"]
    assert scheduler.timesteps.dtype == torch.float32 and scheduler.timesteps.shape == expected_t.shape
    assert (scheduler.timesteps - expected_t).abs().max().item() <= TABLE_TOL
    assert scheduler.sigmas.shape == expected_s.shape
    assert (scheduler.sigmas - expected_s).abs().max().item() <= TABLE_TOL


@pytest.mark.parametrize("shift", [1, 3])
@pytest.mark.parametrize("first", [0, 2])
def test_first_step_found_by_value(golden_dir, cases, shift, first):
    scheduler = _scheduler(golden_dir, shift)
    scheduler.set_timesteps(4)
    prev = scheduler.step(cases["step_model_output"], scheduler.timesteps[first], cases["step_sample"])
    expected = cases[f"step_shift{shift}_n4_t{first}_prev_sample"]
    assert (prev - expected).abs().max().item() <= TABLE_TOL


def test_step_chain(golden_dir, cases):
    scheduler = _scheduler(golden_dir, 1)
    scheduler.set_timesteps(4)
    sample = cases["step_sample"]
    for i, t in enumerate(scheduler.timesteps):
        sample = scheduler.step(cases["step_model_output"], t, sample)
        assert (sample - cases["step_shift1_n4_chain"][i]).abs().max().item() <= TABLE_TOL
    with pytest.raises(ValueError, match="exhausted"):
        scheduler.step(cases["step_model_output"], scheduler.timesteps[0], sample)


def test_scale_noise(golden_dir, cases):
    scheduler = _scheduler(golden_dir, 1)
    out = scheduler.scale_noise(
        cases["scale_noise_original"], cases["scale_noise_noise"], cases["scale_noise_timesteps"]
    )
    assert (out - cases["scale_noise_output"]).abs().max().item() <= TABLE_TOL


def test_unknown_timestep_is_an_error():
    scheduler = RectifiedFlowScheduler()
    scheduler.set_timesteps(4)
    with pytest.raises(ValueError, match="not in the schedule"):
        scheduler.step(torch.zeros(1), 123.0, torch.zeros(1))
