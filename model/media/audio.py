"""Audio in: decode WAV/MP3/FLAC/OGG to the model's 16 kHz mono input and to a playback track.

The model input reproduces upstream's `librosa.load(path, sr=16000)` exactly: libsndfile decoding to float32,
mono as the mean of the channels, then soxr's HQ resampler with the length fixed to ceil(n * 16000 / sr).
"""

from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass

import numpy as np
import soundfile
import soxr

from model.errors import RequestError

MODEL_SAMPLE_RATE = 16000
SUPPORTED_FORMATS = {"WAV": "WAV", "WAVEX": "WAV", "RF64": "WAV", "MP3": "MP3", "FLAC": "FLAC", "OGG": "OGG"}
PLAYBACK_MAX_RATE = 48000


@dataclass(frozen=True, eq=False)
class DecodedAudio:
    """Speech decoded once: the model's input and the track muxed into the output video."""

    samples: np.ndarray  # (n,) float32 mono at 16 kHz, no lead-in: what librosa.load(sr=16000) gives
    playback: np.ndarray  # (channels, m) float32 at playback_rate, the original sound for the output
    playback_rate: int

    @property
    def duration_s(self) -> float:
        return len(self.samples) / MODEL_SAMPLE_RATE


def decode_audio(data: bytes, max_duration_s: float, fps: int = 25, field: str = "audio_base64") -> DecodedAudio:
    """Decode an audio file; raises RequestError (422) naming `field` if it is not usable speech."""
    try:
        info = soundfile.info(io.BytesIO(data))
    except Exception as exc:  # libsndfile says only "format not recognised" or similar
        raise RequestError("invalid_audio", f"{field} is not a WAV, MP3, FLAC or OGG file ({_reason(exc)})", field)
    kind = SUPPORTED_FORMATS.get(info.format)
    if kind is None:
        raise RequestError("invalid_audio", f"{field} is {info.format} audio; send WAV, MP3, FLAC or OGG", field)
    if info.duration > max_duration_s + 1.0:  # the header's estimate; checked exactly after decoding
        raise _too_long(info.duration, max_duration_s, field)
    if kind == "WAV":
        _check_riff_complete(data, field)
    try:
        pcm, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)  # (n, channels)
    except Exception as exc:
        raise RequestError("invalid_audio", f"{field} could not be decoded ({_reason(exc)}); is it truncated?", field)
    if pcm.shape[0] == 0:
        raise RequestError("invalid_audio", f"{field} holds no audio samples; is the file truncated?", field)
    if not np.isfinite(pcm).all():
        raise RequestError("invalid_audio", f"{field} decodes to NaN or infinite samples", field)
    if pcm.shape[0] / rate > max_duration_s:
        raise _too_long(pcm.shape[0] / rate, max_duration_s, field)
    channels_first = np.ascontiguousarray(pcm.T)  # (channels, n)
    return DecodedAudio(
        samples=to_model_input(channels_first, rate),
        playback=_playback_track(channels_first, rate, fps),
        playback_rate=_playback_rate(rate, fps),
    )


def to_model_input(pcm: np.ndarray, rate: int) -> np.ndarray:
    """(channels, n) float32 at `rate` -> (m,) float32 mono 16 kHz, as librosa.load(sr=16000, mono=True)."""
    mono = pcm.mean(axis=0) if pcm.shape[0] > 1 else pcm[0]
    return resample(mono.astype(np.float32, copy=False), rate, MODEL_SAMPLE_RATE)


def resample(x: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """soxr HQ resampling along the last axis, length fixed to librosa's ceil(n * (target / rate))."""
    if rate == target_rate:
        return x
    target_len = math.ceil(x.shape[-1] * (target_rate / rate))  # librosa's float expression, rounding included
    y = soxr.resample(x.T, rate, target_rate, quality="HQ").T.astype(np.float32, copy=False)
    if y.shape[-1] < target_len:
        y = np.pad(y, [(0, 0)] * (y.ndim - 1) + [(0, target_len - y.shape[-1])])
    return np.ascontiguousarray(y[..., :target_len])


def with_lead_in(samples: np.ndarray, lead_in_s: float, sample_rate: int) -> np.ndarray:
    """Prepend `lead_in_s` seconds of digital silence along the last axis (upstream's anullsrc + concat)."""
    pad = round(lead_in_s * sample_rate)
    return np.pad(samples, [(0, 0)] * (samples.ndim - 1) + [(pad, 0)])


def _playback_rate(rate: int, fps: int) -> int:
    """Keep the source rate when a video frame holds a whole number of samples at it, else 48 kHz."""
    return rate if rate <= PLAYBACK_MAX_RATE and rate % fps == 0 else PLAYBACK_MAX_RATE


def _playback_track(pcm: np.ndarray, rate: int, fps: int) -> np.ndarray:
    track = pcm if pcm.shape[0] <= 2 else pcm.mean(axis=0, keepdims=True)
    return resample(track, rate, _playback_rate(rate, fps))


def _check_riff_complete(data: bytes, field: str) -> None:
    """libsndfile silently shortens a cut WAV; the RIFF header says how long the file should be."""
    if data[:4] in (b"RIFF", b"RIFX") and len(data) >= 8:
        declared = struct.unpack("<I" if data[:4] == b"RIFF" else ">I", data[4:8])[0] + 8
        if declared not in (8, 0xFFFFFFFF + 8) and len(data) < declared:  # 0 / -1: length unknown (streamed)
            raise RequestError(
                "invalid_audio",
                f"{field} is a truncated WAV file: its header declares {declared} bytes but it has {len(data)}",
                field,
            )


def _too_long(duration_s: float, max_duration_s: float, field: str) -> RequestError:
    return RequestError(
        "audio_too_long",
        f"{field} is {duration_s:.1f} s long; the limit is {max_duration_s:.0f} s. Split the speech into shorter requests",
        field,
    )


def _reason(exc: Exception) -> str:
    text = str(exc)
    return text.split(": ", 1)[-1] if "<_io.BytesIO" in text else text
