"""The segment planner against upstream OmniAvatar's rules: a worked example of a long request, the table of
segment counts, the float ceil of the frame count and the size buckets."""

from __future__ import annotations

import numpy as np
import pytest

from model.config import GenerationDefaults, PlanConfig
from model.errors import RequestError
from model.media.audio import DecodedAudio
from model.media.image import choose_bucket
from model.plan import audio_frames, frames_per_segment, plan_segments
from model.request import GenerateRequest

BUCKETS_720 = ((400, 720), (720, 720), (720, 400))
BUCKETS_1280 = ((720, 720), (528, 960), (960, 528), (720, 1280), (1280, 720))


def make_request(num_samples: int | None = None, image_hw: tuple[int, int] | None = None, **overrides) -> GenerateRequest:
    defaults = GenerationDefaults()
    audio = None
    if num_samples is not None:
        audio = DecodedAudio(np.zeros(num_samples, np.float32), np.zeros((1, 0), np.float32), 16000)
    fields = dict(
        prompt="p", negative_prompt="", image=None if image_hw is None else np.zeros((*image_hw, 3), np.uint8),
        audio=audio, height=720, width=720, num_frames=None if audio else 81, num_steps=4,
        guidance_scale=4.5, audio_scale=None, overlap_frame=defaults.overlap_frame, seed=0,
    )
    fields.update(overrides)
    return GenerateRequest(**fields)


def test_worked_example_720x720_ten_seconds() -> None:
    """Upstream's worked example: 10 s of speech + 0.3 s lead-in at 720x720 -> L 57, S 276, 6 segments, 259 frames."""
    plan = plan_segments(make_request(num_samples=160_000), PlanConfig(lead_in_s=0.3))
    assert (plan.height, plan.width) == (720, 720)
    assert (plan.frames_per_segment, plan.latent_frames, plan.overlap, plan.prefix_latents) == (57, 15, 13, 4)
    assert (plan.audio_frames, plan.padded_audio_frames, plan.num_segments) == (258, 276, 6)
    assert plan.num_frames == 259, f"expected 259 output frames, got {plan.num_frames}"
    windows = [s.audio_window for s in plan.segments]
    assert windows == [(-1, 56), (43, 100), (87, 144), (131, 188), (175, 232), (219, 276)], windows
    kept = [(s.start_frame, s.end_frame - 1, s.keep_from) for s in plan.segments]
    assert kept == [(0, 56, 0), (57, 100, 13), (101, 144, 13), (145, 188, 13), (189, 232, 13), (233, 258, 13)], kept
    assert [s.num_frames for s in plan.segments] == [57, 44, 44, 44, 44, 26]
    assert plan.duration_s == pytest.approx(10.36)


def test_worked_example_without_lead_in() -> None:
    """Upstream's worked example: the same audio with no lead-in -> 250 audio frames, still S = 276 and 6 segments, 251 frames."""
    plan = plan_segments(make_request(num_samples=160_000), PlanConfig(lead_in_s=0.0))
    assert (plan.audio_frames, plan.padded_audio_frames, plan.num_segments, plan.num_frames) == (250, 276, 6, 251)


def test_two_second_clip_is_one_segment() -> None:
    """Upstream's worked example: 50 audio rows -> S = 56, one segment, 51 frames."""
    plan = plan_segments(make_request(num_samples=32_000), PlanConfig(lead_in_s=0.0))
    assert (plan.padded_audio_frames, plan.num_segments, plan.num_frames) == (56, 1, 51)
    assert plan.segments[0].num_frames == 51


@pytest.mark.parametrize(
    ("max_tokens", "height", "width", "length", "latent"),
    [(30000, 400, 720, 105, 27), (30000, 720, 720, 57, 15), (30000, 528, 960, 57, 15),
     (30000, 720, 1280, 33, 9), (60000, 720, 720, 117, 30), (80000, 720, 720, 157, 40)],
)
def test_segment_length_table(max_tokens: int, height: int, width: int, length: int, latent: int) -> None:
    """Upstream's table of L and T."""
    got = frames_per_segment(max_tokens, height, width)
    assert (got, (got + 3) // 4) == (length, latent)


def test_float_ceil_quirk() -> None:
    """Upstream's float ceil: ceil(4480 / 16000 * 25) is 8 in float64, not the exact 7."""
    assert audio_frames(4480, 16000, 25) == 8
    assert audio_frames(4481, 16000, 25) == 8
    assert audio_frames(640 * 3, 16000, 25) == 3


@pytest.mark.parametrize(
    ("h", "w", "buckets", "expected"),
    [(1080, 1920, BUCKETS_720, (400, 720)), (1920, 1080, BUCKETS_720, (720, 400)), (1024, 1024, BUCKETS_720, (720, 720)),
     (768, 1024, BUCKETS_720, (400, 720)), (1080, 1920, BUCKETS_1280, (720, 1280)), (1920, 1080, BUCKETS_1280, (1280, 720)),
     (768, 1024, BUCKETS_1280, (720, 1280))],
)
def test_bucket_choice(h: int, w: int, buckets, expected) -> None:
    """Upstream's bucket examples."""
    assert choose_bucket(h, w, buckets) == expected


def test_image_sets_the_size_and_height_width_are_ignored() -> None:
    plan = plan_segments(make_request(num_samples=16000, image_hw=(1104, 1472), height=128, width=128), PlanConfig())
    assert (plan.height, plan.width, plan.frames_per_segment) == (400, 720, 105)


def test_without_audio_the_video_has_num_frames() -> None:
    plan = plan_segments(make_request(num_frames=200, height=720, width=720), PlanConfig())
    assert plan.num_frames == 200 and not plan.has_audio and plan.audio_offset_s == 0.0
    assert sum(s.num_frames for s in plan.segments) == 200
    assert plan.segments[-1].end_frame == 200


@pytest.mark.parametrize("num_samples", [0, 1, 639, 16000, 100_000, 160_000, 441_000, 1_234_567])
@pytest.mark.parametrize(("height", "width", "overlap"), [(720, 720, 13), (400, 720, 1), (720, 1280, 13), (128, 1280, 5)])
def test_segments_tile_the_output(num_samples: int, height: int, width: int, overlap: int) -> None:
    """Segments cover frames 0 .. num_frames - 1 once each, in order; windows step by L - f."""
    plan = plan_segments(make_request(num_samples=num_samples, height=height, width=width, overlap_frame=overlap), PlanConfig())
    starts = [s.start_frame for s in plan.segments]
    ends = [s.end_frame for s in plan.segments]
    assert starts[0] == 0 and ends[-1] == plan.num_frames and starts[1:] == ends[:-1], (starts, ends)
    assert all(s.num_frames >= 1 for s in plan.segments)
    length = plan.frames_per_segment
    for s in plan.segments:
        assert s.audio_window == (s.index * (length - overlap) - 1, s.index * (length - overlap) - 1 + length)
        assert s.num_frames <= length - s.keep_from


def test_overlap_must_be_smaller_than_a_segment() -> None:
    with pytest.raises(RequestError) as caught:
        plan_segments(make_request(num_samples=16000, overlap_frame=37, height=1280, width=1280), PlanConfig())
    assert (caught.value.field, caught.value.status) == ("overlap_frame", 422)
    assert "17 frames" in caught.value.message, caught.value.message
