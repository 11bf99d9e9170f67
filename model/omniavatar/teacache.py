"""TeaCache: skip a DiT call's blocks when the timestep modulation has barely moved since the last full call.

The rule (upstream OmniAvatar's, itself TeaCache's for Wan2.1), per guidance branch and segment, with m_i the
(6, D) timestep modulation of step i:
- steps 0 and N - 1 always run the blocks, and reset the accumulator to 0;
- otherwise acc += poly(mean|m_i - m_{i-1}| / mean|m_{i-1}|); acc < threshold skips the blocks, anything else
  runs them and resets acc to 0; m_{i-1} follows every step, skipped or not;
- a full call remembers R = tokens after the last block - tokens after the patch embedding; a skipped call
  uses tokens + R instead of the blocks (audio injection included), and the output head runs as usual.
`poly` rescales the distance by a degree-4 polynomial fitted per model size (`COEFFICIENTS`). The skip pattern
depends only on the timesteps, so every branch and segment skips the same steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["COEFFICIENTS", "TeaCache", "tea_cache_size"]

# polynomial coefficients, highest degree first, of TeaCache's Wan2.1-T2V fits
COEFFICIENTS: dict[str, tuple[float, ...]] = {
    "1.3b": (-5.21862437e04, 9.23041404e03, -5.28275948e02, 1.36987616e01, -4.99875664e-02),
    "14b": (-3.03318725e05, 4.90537029e04, -2.65530556e03, 5.87365115e01, -3.15583525e-01),
}


def tea_cache_size(configured: str | None, detected: str) -> str | None:
    """The coefficient set to use: the configured one, else the detected model size when it has a fit."""
    if configured is not None:
        if configured not in COEFFICIENTS:
            raise ValueError(f"options.tea_cache_model must be one of {sorted(COEFFICIENTS)}, got {configured!r}")
        return configured
    return detected if detected in COEFFICIENTS else None


@dataclass
class TeaCache:
    """One guidance branch's cache over the `num_steps` calls of one segment."""

    threshold: float
    coefficients: tuple[float, ...]
    num_steps: int
    step: int = 0
    accumulated: float = 0.0
    previous: torch.Tensor | None = None
    residual: torch.Tensor | None = None
    computed: int = field(default=0)  # calls that ran the blocks

    def rescaled_distance(self, modulation: torch.Tensor) -> float:
        """poly(mean|m - m_prev| / mean|m_prev|), in the modulation's dtype as upstream computes it."""
        x = ((modulation - self.previous).abs().mean() / self.previous.abs().mean()).item()
        value = 0.0
        for c in self.coefficients:
            value = value * x + c
        return value

    def should_compute(self, modulation: torch.Tensor) -> bool:
        """Advance one step and say whether this call must run the blocks; then `store` or `apply`."""
        step = self.step
        self.step = (self.step + 1) % self.num_steps
        if step == 0 or step == self.num_steps - 1 or self.residual is None:
            compute = True
        else:
            self.accumulated += self.rescaled_distance(modulation)
            compute = self.accumulated >= self.threshold
        if compute:
            self.accumulated = 0.0
        self.previous = modulation
        return compute

    def store(self, tokens_in: torch.Tensor, tokens_out: torch.Tensor) -> None:
        self.residual = tokens_out - tokens_in
        self.computed += 1

    def apply(self, tokens_in: torch.Tensor) -> torch.Tensor:
        return tokens_in + self.residual
