"""Rectified-flow (flow matching) Euler scheduler of TripoSG / MIDI-3D.

Forward process x_sigma = (1 - sigma) x0 + sigma noise; the model predicts
v ~ x0 - noise, and sampling walks sigma from 1 down to 0 with deterministic
Euler steps. Timesteps handed to the model are sigma * 1000 as float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ConfigMixin


@dataclass
class RectifiedFlowSchedulerConfig(ConfigMixin):
    """Fields of the hub `scheduler/scheduler_config.json`."""

    num_train_timesteps: int = 1000
    shift: float = 1.0
    use_dynamic_shifting: bool = False


class RectifiedFlowScheduler:
    """Shifted uniform sigma schedule and Euler update; holds the step position between calls."""

    def __init__(self, config: RectifiedFlowSchedulerConfig | None = None):
        self.config = config or RectifiedFlowSchedulerConfig()
        if self.config.use_dynamic_shifting:
            raise ValueError("use_dynamic_shifting is not supported (MIDI-3D and TripoSG do not use it)")
        self.timesteps = torch.empty(0)
        self.sigmas = torch.empty(0)
        self._step_index: int | None = None

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        """sigma_i = shift s / (1 + (shift - 1) s) for s = 1 - i/n, plus a final sigma of 0."""
        if num_inference_steps < 1:
            raise ValueError("num_inference_steps must be at least 1")
        shift = float(self.config.shift)
        s = 1.0 - torch.arange(num_inference_steps, dtype=torch.float64) / num_inference_steps
        sigmas = (shift * s / (1.0 + (shift - 1.0) * s)).to(torch.float32)
        self.timesteps = (sigmas * self.config.num_train_timesteps).to(device)
        self.sigmas = torch.cat([sigmas, torch.zeros(1)]).to(device)
        self._step_index = None

    def _index_for_timestep(self, timestep: torch.Tensor | float) -> int:
        # the second occurrence when a value repeats (diffusers' rule for resumed schedules)
        value = torch.as_tensor(timestep, dtype=self.timesteps.dtype).to(self.timesteps.device)
        matches = (self.timesteps == value).nonzero()
        if len(matches) == 0:
            raise ValueError(f"timestep {float(timestep)} is not in the schedule; call set_timesteps first")
        return int(matches[1 if len(matches) > 1 else 0])

    def step(self, model_output: torch.Tensor, timestep: torch.Tensor | float, sample: torch.Tensor) -> torch.Tensor:
        """One Euler step: sample + (sigma_k - sigma_{k+1}) v, computed in float32, returned in v's dtype."""
        if self._step_index is None:
            self._step_index = self._index_for_timestep(timestep)
        k = self._step_index
        if k + 1 >= len(self.sigmas):
            raise ValueError("the schedule is exhausted; call set_timesteps again")
        dt = self.sigmas[k] - self.sigmas[k + 1]
        prev = sample.to(torch.float32) + dt * model_output.to(torch.float32)
        self._step_index = k + 1
        return prev.to(model_output.dtype)

    def scale_noise(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Forward process at per-row timesteps (sigma = t / num_train_timesteps, no shift)."""
        sigma = timesteps.to(torch.float32) / self.config.num_train_timesteps
        sigma = sigma.reshape(-1, *([1] * (sample.ndim - 1))).to(sample.device)
        return ((1.0 - sigma) * sample + sigma * noise).to(sample.dtype)
