"""Flow-matching Euler sampler with shift 5, as upstream runs it, and the distilled explicit-timestep schedule."""

from __future__ import annotations

from collections.abc import Sequence

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
        self._set_sigmas(u)

    def set_explicit_timesteps(self, timesteps: Sequence[int]) -> None:
        """The step-distilled schedule (lightx2v, CausVid): raw timesteps such as 1000, 750, 500, 250.

        The distilled models were trained on the 1000-step shifted table: raw timestep r selects
        u = linspace(1, 0, 1001)[1000 − r] = r / 1000, so σ = shift·u / (1 + (shift − 1)·u) and the DiT sees
        t = 1000·σ (with shift 5: 1000, 937.5, 833.3, 625); σ after the last step is 0.
        """
        raw = [int(t) for t in timesteps]
        bad = [t for t in raw if not 0 < t <= self.num_train_timesteps]
        if not raw or bad or any(a <= b for a, b in zip(raw, raw[1:], strict=False)):
            raise ValueError(
                f"timesteps must be strictly decreasing integers in (0, {self.num_train_timesteps}], got {raw}"
            )
        table = torch.linspace(1.0, 0.0, self.num_train_timesteps + 1, dtype=torch.float32)
        self._set_sigmas(table[[self.num_train_timesteps - t for t in raw]])

    def _set_sigmas(self, u: torch.Tensor) -> None:
        self.sigmas = self.shift * u / (1 + (self.shift - 1) * u)
        self.timesteps = self.sigmas * self.num_train_timesteps

    def step(self, velocity: torch.Tensor, index: int, sample: torch.Tensor) -> torch.Tensor:
        """Euler step i: x + v·(σ_{i+1} − σ_i), in the sample's dtype (the σ difference is a float32 scalar)."""
        sigma = self.sigmas[index]
        sigma_next = self.sigmas[index + 1] if index + 1 < len(self.sigmas) else torch.zeros((), dtype=sigma.dtype)
        return sample + velocity * (sigma_next - sigma)  # a 0-dim CPU tensor acts as a scalar on any device
