"""Audio in: decode WAV/MP3/FLAC/OGG to the model's 16 kHz mono input and to a playback track.

The model input reproduces upstream's `librosa.load(path, sr=16000)` exactly: libsndfile decoding to float32,
mono as the mean of the channels, then soxr's HQ resampler with the length fixed to ceil(n * 16000 / sr).
Decoding is streamed in blocks, each block downmixed and fed to soxr's streaming resampler (whose output is
the same as a one-shot resample), so memory follows the output tracks, not the input's rate and channels.
(Block decoding is bit-exact except for MPEG-2 MP3, 24 kHz and below, where libmpg123 differs in the last bit.)
Float samples outside [-1, 1] are clipped to it (integer formats never leave it).
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
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 96000  # the default limits (RequestLimits: max_audio_sample_rate, max_audio_channels)
MAX_CHANNELS = 8
SUPPORTED_FORMATS = {"WAV": "WAV", "WAVEX": "WAV", "RF64": "WAV", "MP3": "MP3", "FLAC": "FLAC", "OGG": "OGG"}
AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)  # from MIN_SAMPLE_RATE to the playback maximum
PLAYBACK_MAX_RATE = 48000
BLOCK_FRAMES = 1 << 16  # input frames decoded at a time


@dataclass(frozen=True, eq=False)
class DecodedAudio:
    """Speech decoded once: the model's input and the track muxed into the output video."""

    samples: np.ndarray  # (n,) float32 mono at 16 kHz, no lead-in: what librosa.load(sr=16000) gives
    playback: np.ndarray  # (channels, m) float32 at playback_rate, the original sound for the output
    playback_rate: int

    @property
    def duration_s(self) -> float:
        return len(self.samples) / MODEL_SAMPLE_RATE


def decode_audio(
    data: bytes,
    max_duration_s: float,
    fps: int = 25,
    field: str = "audio_base64",
    max_sample_rate: int = MAX_SAMPLE_RATE,
    max_channels: int = MAX_CHANNELS,
) -> DecodedAudio:
    """Decode an audio file with bounded memory.

    Raises RequestError (422) naming `field`: `invalid_audio` (not decodable, empty, NaN or infinite
    samples, a rate under 8 kHz), `audio_too_long`, `audio_sample_rate` or `audio_channels` (over the limits,
    decided from the header before decoding).
    """
    info = _probe(data, field)
    rate, channels = info.samplerate, info.channels
    if rate < MIN_SAMPLE_RATE:
        raise RequestError("invalid_audio", f"{field} has a sample rate of {rate} Hz; speech needs {MIN_SAMPLE_RATE} Hz or more", field)
    if rate > max_sample_rate:
        raise RequestError(
            "audio_sample_rate", f"{field} has a sample rate of {rate} Hz; the limit is {max_sample_rate} Hz. Resample it", field
        )
    if channels > max_channels:
        raise RequestError("audio_channels", f"{field} has {channels} channels; the limit is {max_channels}. Mix it down", field)
    if info.duration > max_duration_s + 1.0:  # the header's estimate; checked exactly while decoding
        raise _too_long(info.duration, max_duration_s, field)
    if SUPPORTED_FORMATS[info.format] == "WAV":
        _check_riff_complete(data, field)
    expected = min(max(info.frames, 0), int(max_duration_s * rate) + 1)  # exact for WAV/FLAC/OGG, an estimate for MP3
    model_track = _StreamingResampler(rate, MODEL_SAMPLE_RATE, 1, expected)
    playback_rate = _playback_rate(rate, fps)
    playback_track = _StreamingResampler(rate, playback_rate, channels if channels <= 2 else 1, expected)  # > 2: mono
    frames = 0
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as file:
            # read() until it returns nothing, as soundfile.read() does (blocks() pads to the header's length)
            while len(block := file.read(BLOCK_FRAMES, dtype="float32", always_2d=True)):  # (n, channels)
                frames += len(block)
                if frames > max_duration_s * rate:
                    raise _too_long(frames / rate, max_duration_s, field)
                if not np.isfinite(block).all():
                    raise RequestError("invalid_audio", f"{field} decodes to NaN or infinite samples", field)
                channels_first = np.clip(np.ascontiguousarray(block.T), -1, 1)  # (channels, n)
                mono = channels_first.mean(axis=0) if channels > 1 else channels_first[0]
                model_track.feed(mono[:, None])
                playback_track.feed(channels_first.T if channels <= 2 else mono[:, None])
    except RequestError:
        raise
    except Exception as exc:
        raise RequestError("invalid_audio", f"{field} could not be decoded ({_reason(exc)}); is it truncated?", field)
    if frames == 0:
        raise RequestError("invalid_audio", f"{field} holds no audio samples; is the file truncated?", field)
    return DecodedAudio(
        samples=model_track.finish(frames)[0],
        playback=playback_track.finish(frames),
        playback_rate=playback_rate,
    )


class _StreamingResampler:
    """soxr HQ resampling of (n, channels) float32 blocks into one preallocated (channels, m) track whose
    length is fixed to librosa's ceil(n * target / rate) at the end."""

    def __init__(self, rate: int, target_rate: int, channels: int, expected_frames: int) -> None:
        self.rate, self.target_rate = rate, target_rate
        self._stream = None if rate == target_rate else soxr.ResampleStream(rate, target_rate, channels, dtype="float32", quality="HQ")
        self._track = np.zeros((channels, self._length(expected_frames)), np.float32)
        self._filled = 0

    def feed(self, block: np.ndarray, last: bool = False) -> None:
        out = block if self._stream is None else self._stream.resample_chunk(np.ascontiguousarray(block), last=last)
        self._write(out)

    def finish(self, frames: int) -> np.ndarray:
        if self._stream is not None:
            self.feed(np.zeros((0, self._track.shape[0]), np.float32), last=True)
        length = self._length(frames)
        if self._track.shape[1] < length:
            self._grow(length)  # zeros beyond what soxr gave, as librosa pads a short resample
        return self._track if self._track.shape[1] == length else np.ascontiguousarray(self._track[:, :length])

    def _write(self, out: np.ndarray) -> None:  # (k, channels)
        end = self._filled + len(out)
        if end > self._track.shape[1]:
            self._grow(max(end, int(self._track.shape[1] * 1.5)))
        self._track[:, self._filled : end] = out.T
        self._filled = end

    def _grow(self, length: int) -> None:
        grown = np.zeros((self._track.shape[0], length), np.float32)
        grown[:, : self._filled] = self._track[:, : self._filled]
        self._track = grown

    def _length(self, frames: int) -> int:
        return math.ceil(frames * (self.target_rate / self.rate))  # librosa's float expression, rounding included


def with_lead_in(samples: np.ndarray, lead_in_s: float, sample_rate: int) -> np.ndarray:
    """Prepend `lead_in_s` seconds of digital silence along the last axis (upstream's anullsrc + concat)."""
    pad = round(lead_in_s * sample_rate)
    return np.pad(samples, [(0, 0)] * (samples.ndim - 1) + [(pad, 0)])


def _playback_rate(rate: int, fps: int) -> int:
    """Keep the source rate when AAC takes it and a video frame holds a whole number of samples, else 48 kHz."""
    return rate if rate in AAC_RATES and rate % fps == 0 else PLAYBACK_MAX_RATE


def _probe(data: bytes, field: str) -> soundfile._SoundFileInfo:
    """The header: format, rate, channels, length; a RequestError unless it is WAV, MP3, FLAC or OGG."""
    try:
        info = soundfile.info(io.BytesIO(data))
    except Exception as exc:  # libsndfile says only "format not recognised" or similar
        raise RequestError("invalid_audio", f"{field} is not a WAV, MP3, FLAC or OGG file ({_reason(exc)})", field)
    if info.format not in SUPPORTED_FORMATS:
        raise RequestError("invalid_audio", f"{field} is {info.format} audio; send WAV, MP3, FLAC or OGG", field)
    if info.samplerate <= 0 or info.channels <= 0:
        raise RequestError("invalid_audio", f"{field} declares {info.samplerate} Hz and {info.channels} channels", field)
    return info


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
