"""Segment encoding and concatenation with real PyAV/FFmpeg: standalone fragmented MP4s, exact frame
counts, and one continuous AAC stream whose audio lines up with the video across segment boundaries."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from model.config import PlanConfig
from model.media import EncodingOptions, SegmentEncoder, concatenate_segments, output_audio_track
from model.media.audio import decode_audio
from model.media.mp4 import OutputTrack
from model.plan import plan_segments
from tests.helpers import audio_file, speech_like
from tests.unit.test_plan import make_request

SMALL = PlanConfig(max_tokens=60, buckets=((64, 96),))  # L = 9 frames at 64x96: several short segments


def decode_video(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def decode_audio_track(data: bytes) -> tuple[np.ndarray, int]:
    """(channels, n) float32 and the pts of the first decoded sample."""
    with av.open(io.BytesIO(data)) as container:  # read the frames before the container closes
        frames = list(container.decode(audio=0))
        return np.concatenate([f.to_ndarray() for f in frames], axis=1), frames[0].pts


def lag_of(x: np.ndarray, reference: np.ndarray) -> int:
    """The shift (samples) that best aligns x with the reference, by FFT cross-correlation."""
    n = len(x) + len(reference)
    corr = np.fft.irfft(np.fft.rfft(x, n) * np.conj(np.fft.rfft(reference, n)), n)
    k = int(np.argmax(corr))
    return k if k < n // 2 else k - n


@pytest.fixture(scope="module")
def encoded():
    """A 2.3 s request split into segments of 9 frames (overlap 5), with moving test frames."""
    audio = decode_audio(audio_file(speech_like(2.3, rate=44100, channels=2), 44100), max_duration_s=60)
    request = make_request(num_samples=len(audio.samples), image_hw=(64, 96), overlap_frame=5)
    request = type(request)(**{**request.__dict__, "audio": audio})
    plan = plan_segments(request, SMALL)
    encoder = SegmentEncoder(plan, audio, EncodingOptions(crf=18, preset="ultrafast"))
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (s.num_frames, 64, 96, 3), dtype=np.uint8) for s in plan.segments]
    for f in frames:  # smooth gradients encode faithfully; noise would be blurred by the codec
        f[:] = np.linspace(0, 255, 96, dtype=np.uint8)[None, None, :, None] // 2 + f.mean(axis=(1, 2, 3), keepdims=True).astype(np.uint8) // 2
    segments = [encoder.encode(s, f) for s, f in zip(plan.segments, frames)]
    return plan, audio, frames, segments


def test_segments_are_standalone_fragmented_mp4s(encoded) -> None:
    plan, _, frames, segments = encoded
    assert plan.num_segments >= 5, "the fixture should exercise several segment boundaries"
    for spec, data, sent in zip(plan.segments, segments, frames):
        assert data[4:8] == b"ftyp" and b"mvex" in data[:4096] and b"moof" in data, "fragmented MP4: moov with mvex, then moof"
        with av.open(io.BytesIO(data)) as container:
            video, audio = container.streams.video[0], container.streams.audio[0]
            assert (video.codec_context.name, video.format.name, video.average_rate) == ("h264", "yuv420p", 25)
            assert audio.codec_context.name == "aac"
        got = decode_video(data)
        assert got.shape == (spec.num_frames, 64, 96, 3), f"segment {spec.index}: {got.shape}"
        assert np.abs(got.astype(int) - sent).mean() < 4, "decoded frames should be close to what was encoded"


def test_concatenation_keeps_every_frame(encoded) -> None:
    plan, _, _, segments = encoded
    whole = concatenate_segments(segments)
    joined = decode_video(whole)
    assert joined.shape[0] == plan.num_frames, f"expected {plan.num_frames} frames, got {joined.shape[0]}"
    np.testing.assert_array_equal(joined, np.concatenate([decode_video(s) for s in segments]), "packets are copied, not re-encoded")
    with av.open(io.BytesIO(whole)) as container:
        assert container.streams.video[0].duration * container.streams.video[0].time_base == pytest.approx(plan.duration_s)


def test_audio_is_continuous_and_in_sync(encoded) -> None:
    plan, audio, _, segments = encoded
    track = output_audio_track(audio, plan)
    reference, rate = track.slice(0, track.length), track.rate
    assert reference.shape[1] == plan.num_frames * rate // 25, "the track lasts exactly as long as the video"
    silence = round(plan.audio_offset_s * rate)
    assert not reference[:, :silence].any() and reference[:, silence:].any(), "speech starts after one frame + lead-in"
    joined, first = decode_audio_track(concatenate_segments(segments))
    got = joined[0, : reference.shape[1]]
    assert first == 0 and lag_of(got, reference[0]) == 0, "the whole video's audio is not shifted"
    snr = 10 * np.log10(np.sum(reference[0] ** 2) / np.sum((got - reference[0, : len(got)]) ** 2))
    assert snr > 15, f"the joined AAC should match the input closely (no gaps or glitches at boundaries); SNR {snr:.1f} dB"
    for spec, data in zip(plan.segments[1:], segments[1:]):
        piece, offset = decode_audio_track(data)
        start = spec.start_frame * rate // 25
        assert 0 <= offset < 1024, f"segment {spec.index}: its audio starts {offset} samples in (one AAC frame at most)"
        shifted = reference[0, start + offset : start + offset + piece.shape[1]]
        assert lag_of(piece[0, 1024 : len(shifted)], shifted[1024:]) == 0, f"segment {spec.index} audio is out of sync"


def test_silent_track_without_audio() -> None:
    plan = plan_segments(make_request(num_frames=30, height=128, width=128), PlanConfig())
    encoder = SegmentEncoder(plan, None, EncodingOptions(preset="ultrafast"))
    data = encoder.encode(plan.segments[0], np.zeros((30, 128, 128, 3), np.uint8))
    samples, _ = decode_audio_track(data)
    assert samples.shape[0] == 1 and not np.abs(samples).max() > 1e-4, "a silent mono track"


def test_encoder_refuses_wrong_frames(encoded) -> None:
    plan, audio, _, _ = encoded
    with pytest.raises(ValueError, match="expected frames of shape"):
        SegmentEncoder(plan, audio, EncodingOptions()).encode(plan.segments[0], np.zeros((3, 64, 96, 3), np.uint8))


def test_output_track_slices_are_the_padded_speech() -> None:
    speech = np.arange(1, 11, dtype=np.float32)[None]  # samples 1..10 from offset 3 of a 16-sample track
    track = OutputTrack(speech, rate=8000, offset=3, length=16)
    whole = np.concatenate([np.zeros(3), speech[0], np.zeros(3)]).astype(np.float32)[None]
    for start, stop in [(0, 16), (0, 2), (2, 5), (5, 12), (12, 20), (16, 20), (0, 1000)]:
        np.testing.assert_array_equal(track.slice(start, stop), whole[:, start:stop], err_msg=f"slice [{start}, {stop})")
