"""The guided flow-matching sampler of one segment: what the backend runs and `bench.gpu_levers` times."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from model.omniavatar.dit import OmniAvatarTransformer, TextKV
from model.omniavatar.guidance import Guidance, combine, guidance_inputs
from model.omniavatar.parallel import ParallelGroups, run_passes
from model.omniavatar.scheduler import FlowMatchScheduler
from model.omniavatar.teacache import TeaCache

__all__ = ["Conditions", "denoise_segment"]


@dataclass(frozen=True)
class Conditions:
    """What every DiT call of one request shares."""

    guidance: Guidance
    context: torch.Tensor | TextKV  # (1, text_len, text_dim), or its cross-attention keys/values
    negative: torch.Tensor | TextKV | None  # the negative prompt's, when guidance needs it
    seed: int
    num_steps: int
    timesteps: tuple[int, ...] | None = None  # an explicit (distilled) schedule instead of num_steps
    tea_cache_threshold: float = 0.0

    def scheduler(self) -> FlowMatchScheduler:
        scheduler = FlowMatchScheduler(shift=5.0)
        if self.timesteps is not None:
            scheduler.set_explicit_timesteps(self.timesteps)
        else:
            scheduler.set_timesteps(self.num_steps)
        return scheduler


@torch.inference_mode()
def denoise_segment(
    dit: OmniAvatarTransformer,
    conditions: Conditions,
    latents: torch.Tensor,
    y: torch.Tensor,
    window: torch.Tensor,
    held: torch.Tensor,
    tea_cache_coefficients: tuple[float, ...] | None = None,
    checkpoint: Callable[[], None] = lambda: None,
    on_step: Callable[[int, int], None] = lambda step, steps: None,
    groups: ParallelGroups | None = None,
) -> tuple[torch.Tensor, int]:
    """The guided Euler loop from `latents` (1, 16, T, h, w), with `held` (1, 16, p, h, w) written over the
    first p latent frames before every step and after the last one, as upstream does.

    Args:
        y: (1, 17, T, h, w) reference latent + mask; window: (1, 4T - 3, audio_dim) audio rows.
        tea_cache_coefficients: TeaCache's polynomial, needed when `conditions.tea_cache_threshold` > 0.
        checkpoint: called before every step (raises to cancel); on_step(step, steps) after each.
        groups: with guidance parallel, the passes of a step are split over the guidance ranks.

    Returns:
        The latents and the number of DiT forwards that ran the blocks (steps x passes unless TeaCache skips).
    """
    fixed = held.shape[2]
    scheduler = conditions.scheduler()
    steps = len(scheduler.timesteps)
    passes = conditions.guidance.num_passes
    caches: list[TeaCache | None] = [None] * passes
    if conditions.tea_cache_threshold > 0:
        if tea_cache_coefficients is None:
            raise ValueError("TeaCache needs the coefficients of the model's size")
        caches = [TeaCache(conditions.tea_cache_threshold, tea_cache_coefficients, steps) for _ in range(passes)]
    for i, t in enumerate(scheduler.timesteps):
        checkpoint()
        latents[:, :, :fixed] = held
        x = torch.cat([latents, y], dim=1)  # (1, 33, T, h, w)
        timestep = t.reshape(1).to(latents.device)  # the DiT casts it to its dtype before the sinusoid
        inputs = guidance_inputs(conditions.guidance, conditions.context, conditions.negative, window)

        def velocity(index: int, x=x, timestep=timestep, inputs=inputs) -> torch.Tensor:
            context, audio = inputs[index]  # each guidance branch has its own TeaCache
            return dit(x, timestep, context, audio, tea_cache=caches[index])[0]  # (1, 16, T, h, w)

        v = combine(conditions.guidance, run_passes(velocity, passes, groups, latents))
        latents = scheduler.step(v, i, latents)
        on_step(i + 1, steps)
    latents[:, :, :fixed] = held
    if caches[0] is not None:  # under guidance parallel, this rank's branches only
        return latents, sum(cache.computed for cache in caches)
    return latents, steps * passes
