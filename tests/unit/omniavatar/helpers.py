"""Small helpers shared by the OmniAvatar tests."""

from __future__ import annotations

import torch


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute element difference, in float64."""
    return (a.double() - b.double()).abs().max().item()
