"""PreviewBackend: the embedded default. CPU only, no weights, deterministic for a seed.

It follows the same segment plan as OmniAvatar and reports progress in the same shape: each segment's
frames are rendered in `num_steps` chunks, one progress step per chunk, with a cancel check before every
frame. `seconds_per_step` (default 0) makes it keep a model's pace, for trying clients against realistic
timings.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from model.backend import AvatarBackend, CancelToken, SegmentFrames, StepCallback
from model.config import ModelConfig
from model.media.audio import with_lead_in
from model.media.image import fit_to_bucket
from model.plan import SegmentPlan
from model.preview.animation import AnimationStyle, Animator, loudness_envelope
from model.preview.face import find_face, placeholder_portrait
from model.request import GenerateRequest


class PreviewBackend(AvatarBackend):
    """Animates the reference image (or a drawn placeholder) so its mouth and head follow the speech."""

    name = "preview"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        options = dict(config.options)
        self.seconds_per_step = float(options.pop("seconds_per_step", 0.0))
        self.style = AnimationStyle(**options)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": "preview: the reference image animated from the audio, no weights", "device": "cpu"}

    def warm_up(self) -> None:
        find_face(np.zeros((64, 64, 3), np.uint8))  # loads the face detector

    def generate(
        self, request: GenerateRequest, plan: SegmentPlan, cancel: CancelToken, on_step: StepCallback
    ) -> Iterator[SegmentFrames]:
        animator = self._animator(request, plan)
        for spec in plan.segments:
            frames = np.empty((spec.num_frames, plan.height, plan.width, 3), np.uint8)
            for step, chunk in enumerate(np.array_split(np.arange(spec.num_frames), request.num_steps), start=1):
                for i in chunk:
                    cancel.checkpoint()
                    frames[i] = animator.render(spec.start_frame + int(i))
                if self.seconds_per_step:
                    cancel.wait(self.seconds_per_step)
                on_step(spec.index, step, request.num_steps)
            yield SegmentFrames(index=spec.index, frames=frames)

    def _animator(self, request: GenerateRequest, plan: SegmentPlan) -> Animator:
        if request.image is not None:
            image = (fit_to_bucket(request.image, plan.height, plan.width) * 255).round().astype(np.uint8)
            face = find_face(image)
        else:
            image, face = placeholder_portrait(plan.height, plan.width, request.seed)
        rate = self.config.planning.sample_rate
        samples = np.zeros(0, np.float32) if request.audio is None else with_lead_in(request.audio.samples, plan.lead_in_s, rate)
        envelope = loudness_envelope(samples, plan.num_frames, rate, plan.fps)
        return Animator(image, face, envelope, request.seed, plan.fps, self.style)
