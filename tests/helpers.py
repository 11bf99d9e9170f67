"""Small builders of test inputs: audio and image files in memory, request bodies."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image

EXAMPLES = Path(__file__).resolve().parent / "data"
EXAMPLE_IMAGE = EXAMPLES / "man_on_sofa.jpeg"
EXAMPLE_SPEECH = EXAMPLES / "speech_en.mp3"


def speech_like(seconds: float, rate: int = 16000, channels: int = 1, seed: int = 0) -> np.ndarray:
    """(n, channels) float32: a 220 Hz tone whose loudness rises and falls like syllables, with pauses."""
    t = np.arange(int(seconds * rate)) / rate
    syllables = np.clip(np.sin(2 * np.pi * 3.0 * t), 0, None) * (np.sin(2 * np.pi * 0.4 * t) > -0.3)
    rng = np.random.default_rng(seed)
    tone = 0.4 * syllables * np.sin(2 * np.pi * 220 * t) + 0.002 * rng.standard_normal(len(t))
    return np.repeat(tone[:, None], channels, axis=1).astype(np.float32)


def audio_file(samples: np.ndarray, rate: int, fmt: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt)
    return buffer.getvalue()


def image_file(pixels: np.ndarray, fmt: str = "PNG", **save_args) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A ~60-byte PNG whose header declares width x height (its pixel data is absent): a decompression bomb's header."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def body(**fields) -> bytes:
    return json.dumps({"prompt": "a person talking", **fields}).encode()
