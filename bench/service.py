"""Shared by the service benchmarks: the app of serve_config.yaml in-process, speech of any length, and a
client that timestamps every event of a stream."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import ray
import soundfile
from ray import serve

from deployments.app import AppArgs, build_app
from model.config import PROJECT_ROOT
from model.media.audio import decode_audio

EXAMPLES = PROJECT_ROOT / "tests" / "data"


@contextlib.contextmanager
def running_service(apps: dict[str, AppArgs] | None = None, dashboard: bool = False) -> Iterator[dict[str, str]]:
    """Serve applications (name -> args; default: serve_config.yaml's as "avatar") on a free port; yields their URLs."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    apps = apps or {"avatar": AppArgs.from_serve_config()}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ray.init(num_cpus=4, include_dashboard=dashboard, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        urls = {name: f"http://127.0.0.1:{port}/{name}" for name in apps}
        for name, args in apps.items():
            serve.run(build_app(args), name=name, route_prefix=f"/{name}")
            _wait_until_loaded(urls[name])
        yield urls
    finally:
        ray.shutdown()


def _wait_until_loaded(url: str, timeout_s: float = 300) -> None:
    """Replicas report ready before their backend has loaded; /health answers 200 once it has."""
    deadline = time.monotonic() + timeout_s
    while (health := httpx.get(f"{url}/health", timeout=30)).status_code != 200:
        if health.json().get("status") != "loading" or time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not load: {health.text}")
        time.sleep(0.2)


def speech_request(seconds: float, seed: int = 0, image: bool = True) -> dict[str, Any]:
    """A request with the example speech looped to `seconds` (as WAV) and the example face."""
    audio = decode_audio((EXAMPLES / "speech_en.mp3").read_bytes(), max_duration_s=600)
    pcm = np.tile(audio.playback, (1, int(np.ceil(seconds * audio.playback_rate / audio.playback.shape[1]))))
    pcm = pcm[:, : int(seconds * audio.playback_rate)]
    buffer = io.BytesIO()
    soundfile.write(buffer, pcm.T, audio.playback_rate, format="WAV", subtype="PCM_16")
    body = {"prompt": "A person talking to the camera", "audio_base64": base64.b64encode(buffer.getvalue()).decode(), "seed": seed}
    if image:
        body["image_base64"] = base64.b64encode((EXAMPLES / "man_on_sofa.jpeg").read_bytes()).decode()
    return body


@dataclass
class StreamTiming:
    """When each event of one SSE stream reached the client, from the moment the request was sent."""

    sent: float
    segment_arrivals: list[float] = field(default_factory=list)
    finished: float = 0.0
    request_id: str = ""

    @property
    def time_to_first_segment(self) -> float:
        return self.segment_arrivals[0] - self.sent

    @property
    def total(self) -> float:
        return self.finished - self.sent


def timed_stream(url: str, body: dict[str, Any]) -> StreamTiming:
    timing = StreamTiming(sent=time.monotonic())
    with httpx.Client(timeout=600) as http, http.stream("POST", f"{url}/generate-stream", json=body) as response:
        response.raise_for_status()
        event = None
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event == "segment":
                timing.segment_arrivals.append(time.monotonic())
            elif line.startswith("data:") and event == "start":
                timing.request_id = json.loads(line[5:])["request_id"]
    timing.finished = time.monotonic()
    return timing


def timed_whole_video(url: str, body: dict[str, Any]) -> float:
    sent = time.monotonic()
    with httpx.Client(timeout=600) as http:
        http.post(f"{url}/generate", json=body).raise_for_status()
    return time.monotonic() - sent


def request_record(app: str, request_id: str) -> dict[str, Any]:
    return serve.get_deployment_handle("AvatarGenerator", app_name=app).request_status.remote(request_id).result()
