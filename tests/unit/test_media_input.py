"""Image and audio decoding and the bucket fit: the same values as upstream's code for ordinary inputs, and a
bounded cost (the rise of the process's peak RSS) for the worst accepted ones."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr
import torch
import torch.nn.functional as F
from PIL import Image

from model.errors import RequestError
from model.media.audio import decode_audio
from model.media.image import decode_image, fit_to_bucket
from tests.helpers import EXAMPLE_SPEECH, audio_file, image_file, png_declaring, speech_like

MB = 1 << 20


def peak_bytes(work: Callable[[], object]) -> int:
    """How far this process's resident memory rose above its level before `work` (Linux: the peak-RSS
    counter is reset through /proc/self/clear_refs), whoever allocated it: numpy, PyTorch, Pillow, libsndfile."""

    def status_kib(key: str) -> int:
        line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(key))
        return int(line.split()[1])

    Path("/proc/self/clear_refs").write_text("5")
    before = status_kib("VmRSS:")
    work()
    return (status_kib("VmHWM:") - before) * 1024


def refused(work: Callable[[], object]) -> RequestError:
    with pytest.raises(RequestError) as caught:
        work()
    return caught.value


# -- the bucket fit ------------------------------------------------------------------------------------------


def resize_then_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Upstream's resize_pad, literally: the whole image scaled to cover, then padded/cropped."""
    h, w = image.shape[:2]
    scale = max(height / h, width / w)
    new_h, new_w = int(h * scale), int(w * scale)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    dh, dw = height - new_h, width - new_w
    x = F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))
    return x[0].permute(1, 2, 0).numpy()


def test_fit_to_bucket_crops_as_the_spec_says() -> None:
    """1080x1920 -> [400, 720]: resize to 405x720, then 3 rows off the top and 2 off the bottom."""
    image = np.random.default_rng(1).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    resized = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, size=(405, 720), mode="bilinear", antialias=True)
    expected = resized[0, :, 3:403].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(fit_to_bucket(image, 400, 720), expected, atol=1e-6)


def test_fit_to_bucket_pads_a_truncated_row_with_black() -> None:
    """200x312 -> [400, 720]: s = 720/312, int(312 * s) = 719, so the last column is black padding."""
    out = fit_to_bucket(np.full((200, 312, 3), 200, np.uint8), 400, 720)
    assert out.shape == (400, 720, 3) and out.dtype == np.float32
    assert (out[:, -1] == 0).all() and (out[:, -2] > 0.7).all()


@pytest.mark.parametrize(
    ("shape", "bucket"),
    [((1104, 1472), (400, 720)), ((64, 48), (720, 400)), ((1, 1), (720, 720)), ((719, 721), (720, 720)), ((37, 1000), (400, 720)), ((3, 700), (400, 720))],
)
def test_fit_to_bucket_equals_resize_then_crop(shape: tuple[int, int], bucket: tuple[int, int]) -> None:
    image = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    got, want = fit_to_bucket(image, *bucket), resize_then_crop(image, *bucket)
    assert got.shape == want.shape, f"expected {want.shape}, got {got.shape}"
    np.testing.assert_allclose(got, want, atol=1e-6, err_msg=f"{shape} -> {bucket}")


@pytest.mark.parametrize(("shape", "bucket"), [((1, 4096), (400, 720)), ((4096, 1), (720, 400)), ((4096, 4096), (720, 720))])
def test_fit_to_bucket_memory_is_bounded_by_the_bucket(shape: tuple[int, int], bucket: tuple[int, int]) -> None:
    """A 4096x1 strip would scale to 400x1,638,400 (8 GB) before the crop; only the kept pixels are computed."""
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    out: list[np.ndarray] = []
    peak = peak_bytes(lambda: out.append(fit_to_bucket(image, *bucket)))
    assert out[0].shape == (*bucket, 3)
    assert peak < 50 * MB, f"expected under 50 MB to fit {shape} to {bucket}, got {peak / MB:.0f} MB"


# -- image decoding ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(60000, 60000), (20000, 20000), (10000, 10000), (4097, 16)])
def test_oversized_images_are_refused_from_the_header(size: tuple[int, int]) -> None:
    error = refused(lambda: decode_image(png_declaring(*size), max_side=4096))
    assert (error.status, error.code, error.field) == (422, "image_too_large", "image_base64"), f"{size}: {error.code} {error.message}"


def test_mpo_jpeg_gives_its_first_frame() -> None:
    first, second = (Image.fromarray(np.full((40, 60, 3), v, np.uint8)) for v in (200, 0))
    buffer = io.BytesIO()
    first.save(buffer, "MPO", save_all=True, append_images=[second])
    pixels = decode_image(buffer.getvalue(), max_side=4096)
    assert pixels.shape == (40, 60, 3) and abs(pixels.mean() - 200) < 3, f"expected the bright first frame, got mean {pixels.mean()}"


@pytest.mark.parametrize(
    "data",
    [
        image_file(np.full((8, 8), 60000, np.uint16), "PNG"),
        image_file(np.full((8, 8), 3, np.uint8), "PNG", bits=2),
        image_file(np.full((8, 8, 2), 90, np.uint8), "PNG"),
    ],
    ids=["16-bit grey", "2-bit", "grey+alpha"],
)
def test_unusual_modes_decode_to_rgb(data: bytes) -> None:
    assert decode_image(data, max_side=4096).shape == (8, 8, 3)


@pytest.mark.parametrize("cut", [30, 60, 200])
def test_truncated_images_are_invalid(cut: int) -> None:
    data = image_file(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8), "PNG")[:cut]
    assert refused(lambda: decode_image(data, max_side=4096)).code == "invalid_image"


# -- audio decoding ------------------------------------------------------------------------------------------


def librosa_load_16k(data: bytes) -> np.ndarray:
    """librosa.load(sr=16000)'s steps in one shot: libsndfile float32, mean of channels, soxr HQ, ceil length."""
    pcm, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    mono = np.ascontiguousarray(pcm.T).mean(axis=0)
    if rate == 16000:
        return mono
    y = soxr.resample(mono, rate, 16000, quality="HQ")
    length = math.ceil(len(mono) * (16000 / rate))
    return np.pad(y, (0, max(0, length - len(y))))[:length]


@pytest.mark.parametrize(
    ("rate", "channels", "fmt"),
    [(44100, 2, "WAV"), (16000, 1, "FLAC"), (48000, 1, "OGG"), (22050, 2, "MP3"), (32000, 6, "WAV"), (96000, 8, "FLAC")],
)
def test_streamed_decoding_equals_one_shot(rate: int, channels: int, fmt: str) -> None:
    data = audio_file(speech_like(9.1, rate, channels), rate, fmt)  # several decode blocks
    audio = decode_audio(data, max_duration_s=600)
    # libmpg123 decodes MPEG-2 MP3 (up to 24 kHz) in blocks with a last-bit difference; the rest is bit-exact
    atol = 1e-6 if fmt == "MP3" else 0
    np.testing.assert_allclose(audio.samples, librosa_load_16k(data), rtol=0, atol=atol, err_msg=f"{fmt} {rate} Hz {channels} ch")
    assert audio.playback.shape[0] == (channels if channels <= 2 else 1), f"playback channels: got {audio.playback.shape}"


def test_example_mp3_decodes_as_librosa_does() -> None:
    data = EXAMPLE_SPEECH.read_bytes()
    np.testing.assert_array_equal(decode_audio(data, max_duration_s=600).samples, librosa_load_16k(data))


def test_many_channel_high_rate_audio_costs_its_output_not_its_input() -> None:
    """30 s of 8-channel 96 kHz decoded at once would be 92 MB of float32; streamed, memory follows the tracks."""
    data = audio_file(np.zeros((30 * 96000, 8), np.float32), 96000, "FLAC")
    out: list = []
    peak = peak_bytes(lambda: out.append(decode_audio(data, max_duration_s=600)))
    tracks = out[0].samples.nbytes + out[0].playback.nbytes
    assert out[0].playback_rate == 48000 and out[0].playback.shape[0] == 1
    assert peak < tracks + 24 * MB, f"expected under {(tracks + 24 * MB) / MB:.0f} MB, got {peak / MB:.0f} MB"


@pytest.mark.parametrize(
    ("samples", "rate", "code"),
    [
        (np.zeros((1000, 1), np.float32), 192000, "audio_sample_rate"),
        (np.zeros((1000, 9), np.float32), 16000, "audio_channels"),
        (np.zeros((1000, 1), np.float32), 4000, "invalid_audio"),
        (np.full((16000, 1), np.nan, np.float32), 16000, "invalid_audio"),
        (np.full((16000, 1), np.inf, np.float32), 16000, "invalid_audio"),
        (np.zeros((16000 * 3, 1), np.float32), 16000, "audio_too_long"),
    ],
    ids=["rate over the limit", "too many channels", "rate under 8 kHz", "NaN", "infinity", "too long"],
)
def test_audio_limits(samples: np.ndarray, rate: int, code: str) -> None:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype="FLOAT")
    error = refused(lambda: decode_audio(buffer.getvalue(), max_duration_s=2, max_sample_rate=96000, max_channels=8))
    assert (error.status, error.code, error.field) == (422, code, "audio_base64"), f"expected {code}, got {error.code}: {error.message}"


def test_out_of_range_floats_are_clipped() -> None:
    loud = speech_like(1.0) * 1e10
    buffer = io.BytesIO()
    soundfile.write(buffer, loud, 16000, format="WAV", subtype="FLOAT")
    audio = decode_audio(buffer.getvalue(), max_duration_s=10)
    assert np.abs(audio.samples).max() <= 1 and np.abs(audio.playback).max() <= 1, "samples beyond +-1 are clipped"


@pytest.mark.parametrize(("rate", "playback"), [(40000, 48000), (44100, 44100), (11025, 11025), (96000, 48000)])
def test_playback_rate_is_one_aac_takes(rate: int, playback: int) -> None:
    audio = decode_audio(audio_file(speech_like(0.5, rate), rate), max_duration_s=10)
    assert audio.playback_rate == playback, f"{rate} Hz: expected playback at {playback}, got {audio.playback_rate}"
