"""Flow-matching Euler sampler with shift 5, as upstream runs it (spec §7)."""

from __future__ import annotations

import torch

__all__ = ["FlowMatchScheduler"]


class FlowMatchScheduler:
    """σ_i = shift·u_i / (1 + (shift − 1)·u_i), u = linspace(1, 0, N + 1)[:N] in float32; t_i = 1000·σ_i; σ_N = 0.

    Args:
        shift (`float`, defaults to 5.0): the timestep shift.
        num_train_timesteps (`int`, defaults to 1000): scale from σ to the DiT's timestep.
    """

    def __init__(self, shift: float = 5.0, num_train_timesteps: int = 1000):
        self.shift = shift
        self.num_train_timesteps = num_train_timesteps
        self.sigmas = torch.empty(0)
        self.timesteps = torch.empty(0)

    def set_timesteps(self, num_steps: int) -> None:
        """Build the σ and timestep tables for `num_steps` steps (denoising strength 1, σ_max 1, σ_min 0)."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        u = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float32)[:-1]  # the final 0 is dropped
        self.sigmas = self.shift * u / (1 + (self.shift - 1) * u)
        self.timesteps = self.sigmas * self.num_train_timesteps

    def step(self, velocity: torch.Tensor, index: int, sample: torch.Tensor) -> torch.Tensor:
        """Euler step i: x + v·(σ_{i+1} − σ_i), in the sample's dtype (the σ difference is a float32 scalar)."""
        sigma = self.sigmas[index]
        sigma_next = self.sigmas[index + 1] if index + 1 < len(self.sigmas) else torch.zeros((), dtype=sigma.dtype)
        return sample + velocity * (sigma_next - sigma)  # a 0-dim CPU tensor acts as a scalar on any device
