"""The segment planner: how a request becomes a chain of overlapping segments, as upstream OmniAvatar plans them.

Pure arithmetic on the request's sizes, shared by every backend so that clients see the same structure
whichever backend serves them. Everything is known before any model work starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from model.config import PlanConfig
from model.errors import RequestError
from model.media.image import choose_bucket

if TYPE_CHECKING:
    from model.request import GenerateRequest


@dataclass(frozen=True)
class SegmentSpec:
    """One segment of the plan."""

    index: int
    start_frame: int  # first output frame this segment contributes
    num_frames: int  # output frames it contributes (overlap dropped, final trim applied)
    keep_from: int  # index, among the segment's decoded frames, of its first kept frame (0, then the overlap)
    audio_window: tuple[int, int]  # [start, end) rows of the audio embedding; row -1 is the all-zero row

    @property
    def end_frame(self) -> int:
        return self.start_frame + self.num_frames


@dataclass(frozen=True)
class SegmentPlan:
    """The whole plan: sizes, segment geometry and each segment's share of the output."""

    height: int
    width: int
    fps: int
    frames_per_segment: int  # L: frames decoded per segment, 1 + 4k
    latent_frames: int  # T = (L + 3) / 4
    overlap: int  # f: frames each later segment re-renders from the previous one's tail, 1 + 4n
    prefix_latents: int  # p = (f + 3) / 4
    audio_frames: int  # frames of lead-in + audio (upstream's ori_audio_len); without audio, num_frames - 1
    padded_audio_frames: int  # S: audio_frames padded to whole segments
    lead_in_s: float  # silence before the speech (0 without audio)
    has_audio: bool
    segments: tuple[SegmentSpec, ...]

    @property
    def num_segments(self) -> int:
        return len(self.segments)

    @property
    def num_frames(self) -> int:
        """Output frames: one reference frame plus one per audio frame."""
        return self.audio_frames + 1

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps

    @property
    def audio_offset_s(self) -> float:
        """Where the speech starts in the output: one frame (the reference frame) plus the lead-in."""
        return 1 / self.fps + self.lead_in_s if self.has_audio else 0.0


def frames_per_segment(max_tokens: int, height: int, width: int) -> int:
    """L: the largest 1 + 4k not above max_tokens * 1024 / (H * W), as upstream computes it."""
    raw = int(max_tokens * 16 * 16 * 4 / height / width)  # float division, then truncation
    return raw - ((raw - 1) % 4)


def audio_frames(num_samples: int, sample_rate: int, fps: int) -> int:
    """ceil(N / sr * fps) as upstream evaluates it in float64: one extra frame for some exact multiples."""
    return math.ceil(num_samples / sample_rate * fps)


def pad_to_segments(frames: int, frames_per_seg: int, overlap: int) -> int:
    """S: the first segment covers L - 1 frames, each later one L - f more."""
    first, step = frames_per_seg - 1, frames_per_seg - overlap
    return first + step * math.ceil(max(0, frames - first) / step)


def plan_segments(request: GenerateRequest, config: PlanConfig) -> SegmentPlan:
    """Plan a request. Raises RequestError (422) when the overlap does not fit the segment length."""
    # 1. Frame size: the image's bucket, else the requested size
    if request.image is not None:
        height, width = choose_bucket(request.image.shape[0], request.image.shape[1], config.buckets)
    else:
        height, width = request.height, request.width

    # 2. Segment geometry
    length = frames_per_segment(config.max_tokens, height, width)
    overlap = request.overlap_frame
    if overlap >= length:
        raise RequestError(
            "invalid_field",
            f"overlap_frame {overlap} must be smaller than a segment, which is {max(length, 0)} frames at "
            f"{height}x{width} with max_tokens {config.max_tokens}; use 1 or a smaller 1 + 4n",
            "overlap_frame",
        )

    # 3. Length: lead-in + speech, or the requested frame count
    if request.audio is not None:
        lead_in_samples = round(config.lead_in_s * config.sample_rate)
        content = audio_frames(len(request.audio.samples) + lead_in_samples, config.sample_rate, config.fps)
    else:
        content = request.num_frames - 1
    padded = pad_to_segments(content, length, overlap)

    # 4. Segments: segment 0 keeps all L frames, later ones their last L - f; the total is trimmed
    total = content + 1
    step = length - overlap
    segments = []
    for index in range(1 + (padded - (length - 1)) // step):
        start = 0 if index == 0 else length + (index - 1) * step
        keep_from = 0 if index == 0 else overlap
        window_start = index * step - 1
        segments.append(
            SegmentSpec(
                index=index,
                start_frame=start,
                num_frames=min(length - keep_from, total - start),
                keep_from=keep_from,
                audio_window=(window_start, window_start + length),
            )
        )
    return SegmentPlan(
        height=height,
        width=width,
        fps=config.fps,
        frames_per_segment=length,
        latent_frames=(length + 3) // 4,
        overlap=overlap,
        prefix_latents=(overlap + 3) // 4,
        audio_frames=content,
        padded_audio_frames=padded,
        lead_in_s=config.lead_in_s if request.audio is not None else 0.0,
        has_audio=request.audio is not None,
        segments=tuple(segments),
    )
