"""Peak RSS of the ingress and the generator for the worst inputs the limits accept, as a ratio to an
ordinary request's, measured side by side in one run on the service of serve_config.yaml (target < 1.5x):

- images: a 4096x1 strip and a 4096x4096 noise JPEG vs the example face, each with the same 10 s of speech;
- audio at the duration limit: 8 channels at the sample-rate limit (silent FLAC, the compact attack) vs the
  example speech looped to the same length as a stereo 44.1 kHz MP3, both without an image at 128x128.

Before each request the peak-RSS counters of the Serve processes are reset; after it each one's VmHWM is
read (bench.memory). Linux only.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import soundfile
from PIL import Image

from bench.memory import peak_mib, reset_peaks, serve_processes
from bench.service import EXAMPLES, running_service, speech_request, timed_stream
from deployments.app import AppArgs
from model.media.audio import decode_audio

ROLES = ("AvatarIngress", "AvatarGenerator")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def image_requests() -> dict[str, dict[str, Any]]:
    ordinary = speech_request(10.0)
    strip = np.random.default_rng(0).integers(0, 256, (1, 4096, 3), dtype=np.uint8)
    noise = np.random.default_rng(1).integers(0, 256, (4096, 4096, 3), dtype=np.uint8)
    return {
        "example face (1472x1104 JPEG)": ordinary,
        "4096x1 PNG strip": ordinary | {"image_base64": b64(encoded_image(strip, "PNG"))},
        "4096x4096 noise JPEG": ordinary | {"image_base64": b64(encoded_image(noise, "JPEG", quality=90))},
    }


def audio_requests(seconds: float, rate: int, channels: int) -> dict[str, dict[str, Any]]:
    speech = decode_audio((EXAMPLES / "speech_en.mp3").read_bytes(), max_duration_s=600)
    looped = np.tile(speech.playback, (1, int(np.ceil(seconds * speech.playback_rate / speech.playback.shape[1]))))
    ordinary = encoded_audio(looped[:, : int(seconds * speech.playback_rate)].T, speech.playback_rate, "MP3")
    silent = encoded_audio(np.zeros((rate, channels), np.float32), rate, "FLAC", repeat=int(seconds))
    small = {"prompt": "A person talking to the camera", "height": 128, "width": 128, "num_steps": 1, "seed": 0}
    return {
        f"{seconds:.0f} s stereo 44.1 kHz MP3": small | {"audio_base64": b64(ordinary)},
        f"{seconds:.0f} s {channels}-channel {rate // 1000} kHz FLAC": small | {"audio_base64": b64(silent)},
    }


def encoded_image(pixels: np.ndarray, fmt: str, **args: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **args)
    return buffer.getvalue()


def encoded_audio(samples: np.ndarray, rate: int, fmt: str, repeat: int = 1) -> bytes:
    """(n, channels) samples as a file; `repeat` writes them that many times (long files without the memory)."""
    buffer = io.BytesIO()
    with soundfile.SoundFile(buffer, "w", rate, samples.shape[1], format=fmt) as file:
        for _ in range(repeat):
            file.write(samples)
    return buffer.getvalue()


def peaks(url: str, pids: dict[str, int], body: dict[str, Any]) -> dict[str, float]:
    reset_peaks(pids)
    timed_stream(url, body)
    return {role: peak_mib(pids[role]) for role in ROLES}


def print_table(title: str, results: dict[str, dict[str, float]]) -> None:
    (base_name, base), *others = results.items()
    print(f"\n{title}: peak RSS (MiB), ratio to the first row")
    print(f"{'request':<36} " + " ".join(f"{role:>22}" for role in ROLES))
    for name, peak in results.items():
        print(f"{name:<36} " + " ".join(f"{peak[role]:>14.0f} ({peak[role] / base[role]:>4.2f}x)" for role in ROLES))


def main() -> None:
    args = AppArgs.from_serve_config()
    limits = args.limits
    with running_service({"avatar": args}, dashboard=True) as urls:
        url = urls["avatar"]
        timed_stream(url, speech_request(3.0))  # warm-up: imports, detector, codecs, caches
        pids = serve_processes()
        print(f"limits: {limits.max_image_side} px a side, {limits.max_audio_s:.0f} s, {limits.max_audio_sample_rate} Hz, {limits.max_audio_channels} channels")
        print_table("images (with 10 s of speech)", {name: peaks(url, pids, body) for name, body in image_requests().items()})
        audio = audio_requests(limits.max_audio_s, limits.max_audio_sample_rate, limits.max_audio_channels)
        print_table("audio at the duration limit (128x128, no image)", {name: peaks(url, pids, body) for name, body in audio.items()})


if __name__ == "__main__":
    main()
