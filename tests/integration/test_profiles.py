"""Profiles in one service, as configs/serve-omniavatar-tiny-profiles.yaml serves them: the tiny OmniAvatar as
`quality` (the default, 4 steps with guidance) and `fast` (2 steps, no guidance) on their own generator
deployments. Each streams from its own generators with its own defaults, /health and OpenAPI list both, and
an unknown profile is refused by name; a profile that cannot load leaves the others serving."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ray import serve

from deployments.app import AppArgs, ProfileArgs, build_app
from deployments.profiles import generator_name
from model.responses import HealthResponse
from tests.helpers import EXAMPLE_IMAGE, audio_file, b64, speech_like
from tests.integration.conftest import Service, deployed, wait_until_loaded
from tests.integration.streams import ROUTES, after_queued, decode_frames, segment_bytes

CONFIG = "configs/serve-omniavatar-tiny-profiles.yaml"
SPEECH = audio_file(speech_like(0.4), 16000)  # 0.3 s lead-in + 0.4 s: 2 segments
REQUEST = {"prompt": "a person talking", "image_base64": b64(EXAMPLE_IMAGE.read_bytes()), "audio_base64": b64(SPEECH), "seed": 3}
CONFIGS = {"quality": "configs/omniavatar-tiny.yaml", "fast": "configs/omniavatar-tiny-fast.yaml"}
STEPS = {"quality": 4, "fast": 2}  # as those configs set them


@pytest.fixture(scope="module")
def profiled(base_url: str, tiny_model_dir: Path) -> Iterator[Service]:
    args = AppArgs.from_serve_config(CONFIG, model_dir=str(tiny_model_dir))
    with deployed(build_app(args), base_url, "profiles", "/profiles") as service:  # once no profile is loading
        yield service


def request_record(service: Service, profile: str | None, request_id: str) -> dict | None:
    """What the generators of `profile` (None: the default) know of a request: None if it never reached them."""
    handle = serve.get_deployment_handle(generator_name(profile), app_name=service.app_name)
    return handle.request_status.remote(request_id).result(timeout_s=30)


def test_health_lists_every_profile_with_its_generators(profiled: Service, client: httpx.Client) -> None:
    health = client.get(f"{profiled.url}/health")
    body = health.json()
    HealthResponse.model_validate(body)
    assert health.status_code == 200 and body["status"] == "healthy", body
    assert body["default_profile"] == "quality", f"expected the default profile quality, got {body['default_profile']}"
    profiles = body["profiles"]
    assert list(profiles) == ["quality", "fast"], f"expected profiles quality and fast, got {list(profiles)}"
    for name, profile in profiles.items():
        assert (profile["status"], profile["backend"], profile["device"]) == ("healthy", "omniavatar", "cpu"), (name, profile)
        assert profile["generators"]["ready"] == 1, f"{name}: expected 1 ready generator, got {profile['generators']}"
        assert profile["defaults"]["num_steps"] == STEPS[name], f"{name}: expected {STEPS[name]} steps, got {profile['defaults']}"
        assert profile["config"] == CONFIGS[name], f"{name}: expected the model config {CONFIGS[name]}, got {profile['config']}"
    assert profiles["fast"]["defaults"]["guidance_scale"] == 1.0, profiles["fast"]["defaults"]


@pytest.mark.parametrize(("profile", "route"), [(None, "generate-stream"), ("fast", "generate-stream-chunked")])
def test_each_profile_streams_from_its_own_generators(profiled: Service, client: httpx.Client, profile: str | None, route: str) -> None:
    request_id = uuid.uuid4().hex
    body = REQUEST if profile is None else {**REQUEST, "profile": profile}
    with client.stream("POST", f"{profiled.url}/{route}", json=body, headers={"X-Request-ID": request_id}) as response:
        assert response.status_code == 200, response.read()
        events = after_queued(list(ROUTES[route](response)))
    served_by = profile or "quality"
    start, segments = events[0].data, [e for e in events if e.name == "segment"]
    assert (start["profile"], start["num_steps"]) == (served_by, STEPS[served_by]), f"expected {served_by}'s profile and steps, got {start}"
    assert events[-1].name in ("complete", "completed") and len(segments) == 2, [e.name for e in events]
    frames = [len(decode_frames(segment_bytes(e))) for e in segments]
    assert frames == [e.data["num_frames"] for e in segments] and sum(frames) == start["num_frames"], (frames, start)
    assert sum(e.name == "progress" for e in events) == 2 * STEPS[served_by], "one progress event per step of each segment"
    other = "fast" if profile is None else None
    assert request_record(profiled, profile, request_id)["state"] == "completed", "the profile's own generators ran it"
    assert request_record(profiled, other, request_id) is None, "the other profile's generators never saw it"


def test_an_unknown_profile_is_refused_naming_the_known_ones(profiled: Service, client: httpx.Client) -> None:
    for route in ("generate", "generate-stream"):
        response = client.post(f"{profiled.url}/{route}", json={**REQUEST, "profile": "turbo"})
        error = response.json()["error"]
        assert response.status_code == 422 and error["field"] == "profile", f"{route}: expected 422 on profile, got {response.text}"
        assert "'quality'" in error["message"] and "'fast'" in error["message"], f"the known profiles should be named: {error}"


def test_openapi_offers_the_profiles(profiled: Service, client: httpx.Client) -> None:
    paths = client.get(f"{profiled.url}/openapi.json").json()["paths"]
    for route in ROUTES:
        field = paths[f"/{route}"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]["profile"]
        assert (field["enum"], field["default"]) == (["quality", "fast"], "quality"), f"/{route} profile field: {field}"


def test_a_profile_that_cannot_load_leaves_the_others_serving(base_url: str, tmp_path: Path, client: httpx.Client) -> None:
    app = "profiles-broken"
    broken = ProfileArgs(
        config="configs/omniavatar-tiny.yaml",
        model_dir=str(tmp_path / "missing"),  # its load fails at once, and Serve gives up on it
        generator={"num_replicas": 1, "max_constructor_retry_count": 1, "ray_actor_options": {"num_cpus": 0}},
    )
    preview = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0}}  # no logical CPUs: the session's apps hold them
    args = AppArgs.from_serve_config(generator=preview, profiles={"broken": broken})
    serve.run_many([serve.RunTarget(build_app(args), name=app, route_prefix=f"/{app}")], wait_for_applications_running=False)
    url = f"{base_url}/{app}"
    try:
        health = wait_until_loaded(url)
        body = health.json()
        assert health.status_code == 503 and body["status"] == "unhealthy", f"expected 503 unhealthy, got {health.status_code} {body}"
        states = {name: profile["status"] for name, profile in body["profiles"].items()}
        assert states == {"default": "healthy", "broken": "unhealthy"}, f"expected only broken unhealthy, got {states}"
        assert body["error"].startswith("profile broken:"), f"the error should name the profile: {body['error']}"
        refused = client.post(f"{url}/generate", json={"prompt": "a person talking", "num_frames": 9, "profile": "broken"})
        error = refused.json()["error"]
        assert refused.status_code == 503 and error["code"] == "not_ready", f"expected 503 not_ready, got {refused.text}"
        assert "profile broken failed to load" in error["message"], error
        served = client.post(f"{url}/generate", json={"prompt": "a person talking", "num_frames": 9, "height": 128, "width": 128})
        assert served.status_code == 200 and served.json()["profile"] == "default", f"the default profile still serves: {served.text[:300]}"
    finally:
        serve.delete(app)
