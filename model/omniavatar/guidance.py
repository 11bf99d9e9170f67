"""Classifier-free guidance over text and audio, with upstream's 1 / 2 / 3-pass rule."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["Guidance", "combine", "guidance_inputs", "guided_velocity"]

# velocity(context, audio) -> (B, 16, T, h, w)
VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Guidance:
    """Guidance scales of one request.

    Args:
        guidance_scale: text (and, by default, audio) guidance; 1.0 turns guidance off entirely, even when
            `audio_scale` is set (as upstream).
        audio_scale: separate audio guidance; None or equal to `guidance_scale` means the 2-pass form.
    """

    guidance_scale: float
    audio_scale: float | None = None

    @property
    def num_passes(self) -> int:
        """DiT forwards per step: 1 without guidance, 2 when audio follows text, 3 with separate audio guidance."""
        if self.guidance_scale == 1.0:
            return 1
        if self.audio_scale is None or self.audio_scale == self.guidance_scale:
            return 2
        return 3

    @property
    def needs_negative_prompt(self) -> bool:
        return self.num_passes > 1


def guidance_inputs(
    guidance: Guidance, context: torch.Tensor, negative_context: torch.Tensor | None, audio: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (context, audio) of each DiT pass of one step, in upstream's order: positive, then the negatives.

    - 1 pass: (prompt, audio).
    - 2 passes: + (negative prompt, zero audio).
    - 3 passes: + (prompt, zero audio), (negative prompt, zero audio).
    "Zero audio" is an all-zero window, not the encoding of silence (as upstream).
    """
    passes = guidance.num_passes
    if passes == 1:
        return [(context, audio)]
    if negative_context is None:
        raise ValueError(f"guidance_scale {guidance.guidance_scale} needs the negative prompt's context")
    zero_audio = torch.zeros_like(audio)
    if passes == 2:
        return [(context, audio), (negative_context, zero_audio)]
    return [(context, audio), (context, zero_audio), (negative_context, zero_audio)]


def combine(guidance: Guidance, velocities: list[torch.Tensor]) -> torch.Tensor:
    """One step's guided velocity from the passes of `guidance_inputs`, in the velocities' dtype (as upstream):
    v_neg + g·(v_pos − v_neg) with 2 passes; v_t0 + g·(v_a0 − v_t0) + a·(v_pos − v_a0) with 3."""
    g = guidance.guidance_scale
    if len(velocities) == 1:
        return velocities[0]
    if len(velocities) == 2:
        positive, negative = velocities
        return negative + g * (positive - negative)
    positive, audio_negative, text_negative = velocities
    return text_negative + g * (audio_negative - text_negative) + guidance.audio_scale * (positive - audio_negative)


def guided_velocity(
    velocity: VelocityFn,
    guidance: Guidance,
    context: torch.Tensor,
    negative_context: torch.Tensor | None,
    audio: torch.Tensor,
) -> torch.Tensor:
    """One step's guided velocity: every pass of `guidance_inputs` in order, then `combine`."""
    inputs = guidance_inputs(guidance, context, negative_context, audio)
    return combine(guidance, [velocity(c, a) for c, a in inputs])
