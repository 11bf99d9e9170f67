"""What travels from the generator deployment to the ingress: a job in, then a stream of events out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from model.plan import SegmentPlan
from model.request import GenerateRequest


@dataclass(frozen=True, eq=False)
class GenerationJob:
    """A validated, planned request."""

    request_id: str
    request: GenerateRequest
    plan: SegmentPlan
    caller: Any = None  # the ingress replica's actor handle: a generator stops the job once it is gone


@dataclass(frozen=True)
class Accepted:
    """The generator's first item, yielded at once: the request is admitted and work starts."""

    request_id: str
    backend: dict[str, Any]


@dataclass(frozen=True)
class Progress:
    """One unit of work (a denoising step) done."""

    segment_index: int
    step: int
    num_steps: int


@dataclass(frozen=True, eq=False)
class EncodedSegment:
    """One segment as a standalone MP4."""

    index: int
    total: int
    start_frame: int
    num_frames: int
    mp4: bytes
    codecs: str  # for Media Source Extensions, e.g. 'avc1.64001f,mp4a.40.2'
    compute_s: float  # backend time for this segment
    encode_s: float

    @property
    def is_final(self) -> bool:
        return self.index == self.total - 1
