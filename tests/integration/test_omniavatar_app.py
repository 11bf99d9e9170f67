"""The real OmniAvatar backend behind the service: tiny random weights in the official layout, served by
Ray Serve over HTTP. Streams equal /generate and the offline CLI; a client leaving stops the denoising; a
replica that cannot load says why in /health and answers 503."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from ray import serve

from deployments.app import build_app
from model.config import PROJECT_ROOT
from tests.helpers import EXAMPLE_IMAGE, audio_file, b64, speech_like
from tests.integration.conftest import Service, omniavatar_app_args, wait_for_status, wait_until_loaded
from tests.integration.streams import decode_frames, segment_bytes, sse_events, stream_both_ways, stream_types

SPEECH = audio_file(speech_like(0.7), 16000)  # (0.3 s lead-in + 0.7 s) * 25 = 25 frames: 3 segments of 13 / 8 / 5
REQUEST = {"prompt": "a person talking", "image_base64": b64(EXAMPLE_IMAGE.read_bytes()), "audio_base64": b64(SPEECH), "seed": 11}


@pytest.fixture(scope="module")
def streamed(tiny: Service) -> dict[str, list]:
    return stream_both_ways(tiny.url, REQUEST)


def test_health_names_the_loaded_model(tiny: Service, client: httpx.Client) -> None:
    body = client.get(f"{tiny.url}/health").json()
    assert (body["status"], body["backend"], body["model"], body["device"]) == ("healthy", "omniavatar", "OmniAvatar Wan2.1-T2V-tiny", "cpu")


@pytest.mark.parametrize("route", ["generate-stream", "generate-stream-chunked"])
def test_three_segments_stream(streamed: dict, route: str) -> None:
    events = streamed[route]
    segments = [e for e in events if e.name == "segment"]
    assert events[0].data["total_segments"] == 3 and len(segments) == 3, [e.name for e in events]
    assert events[-1].name in ("complete", "completed"), events[-1].data
    assert [e.data["num_frames"] for e in segments] == [13, 8, 5]
    for event in segments:
        mp4 = segment_bytes(event)
        assert stream_types(mp4) == ["audio", "video"] and len(decode_frames(mp4)) == event.data["num_frames"]
    steps = [e for e in events if e.name == "progress"]
    assert len(steps) == 3 * events[0].data["num_steps"], "one progress event per denoising step"


def test_streams_equal_whole_video_and_offline_cli(tiny: Service, tiny_model_dir: Path, streamed: dict, client: httpx.Client, tmp_path: Path) -> None:
    streams = {route: np.concatenate([decode_frames(segment_bytes(e)) for e in events if e.name == "segment"]) for route, events in streamed.items()}
    whole = client.post(f"{tiny.url}/generate", json=REQUEST)
    assert whole.status_code == 200, whole.text
    served = decode_frames(base64.b64decode(whole.json()["video_base64"]))
    for route, frames in streams.items():
        np.testing.assert_array_equal(frames, served, err_msg=f"{route} differs from /generate")

    # the offline CLI, one torch thread like the replica (ray sets OMP_NUM_THREADS=1): the same numerics
    (tmp_path / "speech.wav").write_bytes(SPEECH)
    dirs = ["--base-dir", str(tiny_model_dir / "Wan2.1-T2V-tiny"), "--omniavatar-dir", str(tiny_model_dir / "OmniAvatar-tiny"),
            "--wav2vec-dir", str(tiny_model_dir / "wav2vec2-base-960h")]
    command = [sys.executable, "-m", "model.omniavatar.generate", "--config", "configs/omniavatar-tiny.yaml", *dirs,
               "--image", str(EXAMPLE_IMAGE), "--audio", str(tmp_path / "speech.wav"), "--prompt", REQUEST["prompt"], "--seed", "11"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for out in ("video.mp4", "frames.npz"):
        done = subprocess.run([*command, "--out", str(tmp_path / out)], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_array_equal(decode_frames((tmp_path / "video.mp4").read_bytes()), served, err_msg="the CLI's MP4 differs")
    raw = np.load(tmp_path / "frames.npz")
    assert list(raw["kept_counts"]) == [13, 8, 5]
    # random weights give noise-like frames that H.264 blurs, so compare by correlation (0.14 for a one-frame shift)
    correlation = np.corrcoef(raw["frames"].ravel().astype(float), served.ravel().astype(float))[0, 1]
    assert correlation > 0.8, f"decoded frames should be the CLI's raw frames up to H.264 loss; correlation {correlation:.2f}"


def test_disconnect_during_segment_zero_stops_denoising(tiny: Service) -> None:
    request_id = uuid.uuid4().hex
    with httpx.Client(timeout=120) as http:
        with http.stream("POST", f"{tiny.url}/generate-stream", json={**REQUEST, "num_steps": 100}, headers={"X-Request-ID": request_id}) as response:
            for event in sse_events(response):
                if event.name == "progress" and event.data["step"] == 3:
                    break
    status = wait_for_status(tiny, request_id, "cancelled")
    assert status["segments"] == 0 and status["steps"] < 100, status
    assert status["steps_after_cancel"] <= 1, f"denoising went on for {status['steps_after_cancel']} steps after the client left"


def broken_copy(source: Path, target: Path, how: str) -> Path:
    shutil.copytree(source, target)
    if how == "missing file":
        (target / "Wan2.1-T2V-tiny" / "Wan2.1_VAE.pth").unlink()
    else:  # a tensor of the wrong shape in the OmniAvatar checkpoint
        path = target / "OmniAvatar-tiny" / "pytorch_model.pt"
        state = torch.load(path, weights_only=True)
        state["audio_proj.proj.weight"] = state["audio_proj.proj.weight"][:, :-1].clone()
        torch.save(state, path)
    return target


@pytest.mark.parametrize(("how", "named"), [("missing file", "Wan2.1_VAE.pth"), ("wrong shape", "audio_proj.proj.weight")])
def test_a_replica_that_cannot_load_says_why(base_url: str, tiny_model_dir: Path, tmp_path: Path, client: httpx.Client, how: str, named: str) -> None:
    app = f"broken-{how.replace(' ', '-')}"
    broken = broken_copy(tiny_model_dir, tmp_path / "model", how)
    # Serve never sees the app running: the replica's load fails in its constructor, and Serve gives up (at once here)
    args = omniavatar_app_args(broken)
    args = args.model_copy(update={"generator": {**args.generator, "max_constructor_retry_count": 1}})
    serve.run_many([serve.RunTarget(build_app(args), name=app, route_prefix=f"/{app}")], wait_for_applications_running=False)
    url = f"{base_url}/{app}"
    try:
        health = wait_until_loaded(url)
        body = health.json()
        assert health.status_code == 503 and body["status"] == "unhealthy" and body["model_loaded"] is False, body
        assert named in body["error"], f"/health should name {named}: {body['error']}"
        began = time.monotonic()
        response = client.post(f"{url}/generate-stream", json=REQUEST)
        assert time.monotonic() - began < 5, "a request to a broken replica must not hang"
        error = response.json()["error"]
        assert response.status_code == 503 and "Retry-After" in response.headers and error["code"] == "not_ready", response.text
        assert "failed to load" in error["message"] and named in error["message"], error
    finally:
        serve.delete(app)
