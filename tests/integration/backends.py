"""Backends for testing the service's error and fault paths: the preview failing at a chosen segment (in the
backend, or with the prompt ENCODER_FAILURE in the encoder: the segment's frames have the wrong size), and the
preview with steps that block like GPU kernels after a slow load."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from model.backend import CancelToken, SegmentFrames, StepCallback
from model.config import ModelConfig
from model.plan import SegmentPlan
from model.preview.backend import PreviewBackend
from model.request import GenerateRequest

ENCODER_FAILURE = "fail in the encoder"
HANG = "hang in a step"


class FailingPreviewBackend(PreviewBackend):
    """Generates like the preview, then raises at segment `fail_at_segment` (an option)."""

    def __init__(self, config: ModelConfig) -> None:
        options = dict(config.options)
        self.fail_at_segment = int(options.pop("fail_at_segment"))
        super().__init__(ModelConfig(config.backend, config.generation, config.planning, options, config.source))

    def generate(self, request: GenerateRequest, plan: SegmentPlan, cancel: CancelToken, on_step: StepCallback) -> Iterator[SegmentFrames]:
        for segment in super().generate(request, plan, cancel, on_step):
            if segment.index == self.fail_at_segment and request.prompt == ENCODER_FAILURE:
                segment = SegmentFrames(segment.index, np.zeros((segment.frames.shape[0], 7, 5, 3), np.uint8))
            elif segment.index == self.fail_at_segment:
                raise RuntimeError(f"synthetic failure at segment {segment.index}")
            yield segment


class BlockingStepPreviewBackend(PreviewBackend):
    """The preview whose steps each block for `blocking_step_s` without looking at the cancel token, as a GPU
    kernel does (for the prompt HANG, for ever); with the option `loaded_when` (a path), its load lasts until
    that file exists."""

    def __init__(self, config: ModelConfig) -> None:
        options = dict(config.options)
        self.blocking_step_s = float(options.pop("blocking_step_s"))
        loaded_when = options.pop("loaded_when", None)
        super().__init__(ModelConfig(config.backend, config.generation, config.planning, options, config.source))
        deadline = time.monotonic() + 120
        while loaded_when and not Path(loaded_when).exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def generate(self, request: GenerateRequest, plan: SegmentPlan, cancel: CancelToken, on_step: StepCallback) -> Iterator[SegmentFrames]:
        def blocking_step(segment_index: int, step: int, num_steps: int) -> None:
            time.sleep(3600 if request.prompt == HANG else self.blocking_step_s)
            on_step(segment_index, step, num_steps)

        yield from super().generate(request, plan, cancel, blocking_step)
