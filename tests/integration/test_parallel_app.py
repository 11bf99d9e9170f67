"""A generator replica over 2 CPU ranks with the shared text encoder (configs/serve-omniavatar-tiny-sp2.yaml):
the video of one rank encoding its own prompts, for sequence parallel and for guidance parallel, on a bucket
whose token count is odd too; a killed rank ends its stream with an `error` event and a fresh replica serves
the next request."""

from __future__ import annotations

from collections.abc import Iterator

import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import ray
import yaml

from deployments.app import AppArgs, build_app
from model.config import PROJECT_ROOT
from tests.helpers import audio_file, b64, image_file, speech_like
from tests.integration.conftest import Service, deployed
from tests.integration.streams import BackgroundStream, decode_frames, segment_bytes, sse_events

SP2 = PROJECT_ROOT / "configs" / "serve-omniavatar-tiny-sp2.yaml"
SPEECH = b64(audio_file(speech_like(0.4), 16000))
IMAGES = {  # buckets (32, 48): 2 x 3 tokens a latent frame, 4 frames: 24 tokens; (48, 48): 3 x 3 x 3 = 27, odd
    "even": b64(image_file(np.full((32, 48, 3), 90, np.uint8))),
    "odd": b64(image_file(np.full((40, 40, 3), 160, np.uint8))),
}


@pytest.fixture(scope="module")
def model_config(tmp_path_factory: pytest.TempPathFactory) -> str:
    """configs/omniavatar-tiny.yaml with a 48x48 bucket, whose 27 tokens a segment do not divide by 2."""
    config = yaml.safe_load((PROJECT_ROOT / "configs" / "omniavatar-tiny.yaml").read_text())
    config["planning"]["buckets"] = [[32, 48], [48, 48]]
    path = tmp_path_factory.mktemp("parallel") / "omniavatar-tiny-odd.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _parallel_args(model_dir: Path, config: str, parallel: dict) -> AppArgs:
    """configs/serve-omniavatar-tiny-sp2.yaml (shared text encoder included) with `parallel`, on half CPUs."""
    args = AppArgs.from_serve_config(SP2, config=config, model_dir=str(model_dir))
    generator = {**args.generator, "placement_group_bundles": [{"CPU": 0.5}] * 2, "ray_actor_options": {"num_cpus": 0.5}}
    return args.model_copy(update={"options": {**args.options, "parallel": parallel}, "generator": generator})


@pytest.fixture(scope="module")
def one_rank(base_url: str, tiny_model_dir: Path, model_config: str) -> Iterator[Service]:
    args = AppArgs.from_serve_config(PROJECT_ROOT / "configs" / "serve-omniavatar-tiny.yaml", config=model_config, model_dir=str(tiny_model_dir))
    with deployed(build_app(args), base_url, "onerank", "/onerank") as service:
        yield service


@pytest.fixture(scope="module")
def ulysses(base_url: str, tiny_model_dir: Path, model_config: str) -> Iterator[Service]:
    with deployed(build_app(_parallel_args(tiny_model_dir, model_config, {"ulysses": 2, "timeout_s": 30})), base_url, "sp2", "/sp2") as service:
        yield service


@pytest.fixture(scope="module")
def cfg(base_url: str, tiny_model_dir: Path, model_config: str) -> Iterator[Service]:
    parallel = {"ulysses": 1, "cfg": 2, "timeout_s": 30}
    with deployed(build_app(_parallel_args(tiny_model_dir, model_config, parallel)), base_url, "cfg2", "/cfg2") as service:
        yield service


def _request(image: str) -> dict:
    return {"prompt": "a person talking", "image_base64": IMAGES[image], "audio_base64": SPEECH, "seed": 5}


def _video(url: str, body: dict) -> np.ndarray:
    with httpx.Client(timeout=180) as http, http.stream("POST", f"{url}/generate-stream", json=body) as response:
        assert response.status_code == 200, response.read()
        events = list(sse_events(response))
    assert events[-1].name == "complete", f"expected the stream to complete, got {events[-1].name}: {events[-1].data}"
    return np.concatenate([decode_frames(segment_bytes(e)) for e in events if e.name == "segment"])


@pytest.fixture(scope="module")
def one_rank_videos(one_rank: Service) -> dict[str, np.ndarray]:
    return {image: _video(one_rank.url, _request(image)) for image in IMAGES}


@pytest.mark.parametrize("image", list(IMAGES))
@pytest.mark.parametrize("layout", ["ulysses", "cfg"])
def test_two_ranks_stream_the_one_rank_video(layout: str, image: str, one_rank_videos: dict, request: pytest.FixtureRequest) -> None:
    service: Service = request.getfixturevalue(layout)
    expected, got = one_rank_videos[image], _video(service.url, _request(image))
    assert got.shape == expected.shape, f"expected frames {expected.shape}, got {got.shape}"
    diff = np.abs(got.astype(int) - expected.astype(int)).max()
    assert diff <= 1, f"{layout} 2, {image} tokens: expected the one-rank frames within 1 level, got {diff}"


def test_health_reports_world_size_layout_and_the_shared_text_encoder(ulysses: Service, cfg: Service) -> None:
    with httpx.Client(timeout=30) as http:
        layouts = {name: http.get(f"{s.url}/health").json() for name, s in (("sp2", ulysses), ("cfg2", cfg))}
    for name, (u, c) in (("sp2", (2, 1)), ("cfg2", (1, 2))):
        got = layouts[name]["parallel"]
        assert (got["world_size"], got["ulysses"], got["cfg"], got["backend"]) == (2, u, c, "gloo"), f"{name}: {got}"
        assert [r["rank"] for r in got["ranks"]] == [0, 1], f"{name}: expected ranks 0 and 1, got {got['ranks']}"
        encoder = layouts[name]["text_encoder"]  # the generators loaded no UMT5: the shared one serves them
        assert (encoder["shared"], encoder["device"]) == (True, "cpu") and encoder["weights_bytes"] > 0, f"{name}: {encoder}"


def test_a_client_that_leaves_stops_every_rank_and_the_next_request_runs(cfg: Service, one_rank_videos: dict) -> None:
    """The ranks agree on the cancellation at the same step, so their collectives stay in step for the next job."""
    stream = BackgroundStream(f"{cfg.url}/generate-stream", _request("odd"))
    stream.wait_for("progress", timeout_s=120)
    stream.leave()
    got, expected = _video(cfg.url, _request("even")), one_rank_videos["even"]
    assert got.shape == expected.shape and np.abs(got.astype(int) - expected.astype(int)).max() <= 1, (
        f"expected the one-rank video {expected.shape} after a cancelled job, got {got.shape}"
    )


def _rank_workers(app_name: str) -> dict[str, str]:
    """The live rank workers of an app's replicas: name -> namespace."""
    named = ray.util.list_named_actors(all_namespaces=True)
    return {a["name"]: a["namespace"] for a in named if a["name"].startswith(f"{app_name}:")}


def test_a_killed_rank_ends_the_stream_and_a_fresh_replica_serves_the_next(ulysses: Service) -> None:
    (name, namespace), = _rank_workers("sp2").items()
    stream = BackgroundStream(f"{ulysses.url}/generate-stream", _request("odd"))
    stream.wait_for("progress", timeout_s=120)
    ray.kill(ray.get_actor(name, namespace=namespace))
    error = stream.wait_for("error", timeout_s=60)
    assert error.data["error"]["code"] == "generation_failed", f"expected generation_failed, got {error.data}"
    deadline = time.monotonic() + 120
    with httpx.Client(timeout=30) as http:  # the replica is replaced with its ranks, then loads
        while set(_rank_workers("sp2")) in (set(), {name}) or http.get(f"{ulysses.url}/health").json()["status"] != "healthy":
            assert time.monotonic() < deadline, f"no fresh replica within 120 s: {_rank_workers('sp2')}"
            time.sleep(0.2)
    frames = _video(ulysses.url, _request("even"))
    assert len(frames) > 0, "expected the next request's video from the fresh replica"
