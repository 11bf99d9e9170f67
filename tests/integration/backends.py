"""A backend for testing the service's error path: the preview, failing at a chosen segment (in the backend,
or with the prompt ENCODER_FAILURE, in the encoder: the segment's frames have the wrong size)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from model.backend import CancelToken, SegmentFrames, StepCallback
from model.config import ModelConfig
from model.plan import SegmentPlan
from model.preview.backend import PreviewBackend
from model.request import GenerateRequest


ENCODER_FAILURE = "fail in the encoder"


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
