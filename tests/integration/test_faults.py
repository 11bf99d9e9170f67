"""Faults and hostile clients against one app with short timeouts: stalled uploads, oversized bodies, busy and
queued generators, a killed or frozen generator replica, a killed ingress replica, cancels on a busy GPU."""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import ray
import requests
from ray import serve

from deployments.app import AppArgs, bind_ingress
from deployments.generator import AvatarGenerator
from deployments.options import StreamOptions
from model.config import load_model_config
from model.request import RequestLimits
from tests.integration.backends import HANG, BlockingStepPreviewBackend
from tests.integration.conftest import Service, deployed
from tests.integration.streams import BackgroundStream

STEP_S = 0.3  # each denoising step blocks this long and cannot be interrupted, as on a GPU
OPTIONS = StreamOptions(
    keepalive_s=0.5,
    health_timeout_s=1.0,
    body_timeout_s=4.0,
    queued_after_s=0.25,
    max_queue_wait_s=3.0,
    stall_timeout_s=3.0,
    orphan_check_s=0.5,
)
HEALTH_PERIOD_S = 1.0
LONG = {"prompt": "hi", "num_frames": 2000, "height": 128, "width": 128, "num_steps": 100}  # 2 segments, 60 s
SHORT = {"prompt": "hi", "num_frames": 20, "height": 128, "width": 128, "num_steps": 1}  # one segment, one step
MAX_BODY = 1 << 20


@pytest.fixture(scope="module")
def faults(base_url: str) -> Iterator[Service]:
    args = AppArgs.from_serve_config()
    config = load_model_config(args.config, {"options": {"blocking_step_s": STEP_S}})
    generator = AvatarGenerator.options(
        name="AvatarGenerator",
        num_replicas=1,
        max_ongoing_requests=1,
        max_queued_requests=4,
        health_check_period_s=HEALTH_PERIOD_S,
        health_check_timeout_s=2,
        ray_actor_options={"num_cpus": 1},
    ).bind(config, args.encoding, backend_cls=BlockingStepPreviewBackend, options=OPTIONS)
    ingress = bind_ingress(generator, config, RequestLimits(max_body_bytes=MAX_BODY), OPTIONS, ingress={**args.ingress, "health_check_period_s": HEALTH_PERIOD_S})
    with deployed(ingress, base_url, "faults", "/faults") as service:
        yield service


def replica_actor(service: Service, deployment: str):
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if f"{service.app_name}#{deployment}" in a["name"]]
    assert len(names) == 1, f"expected one {deployment} replica, found {names}"
    return ray.get_actor(names[0], namespace="serve")


def healthy_again(service: Service, timeout_s: float = 90) -> dict:
    """Poll /health until a generator is ready (through restarts: refused connections and 5xx are retried)."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{service.url}/health", timeout=5)
            last = response.text
            if response.status_code == 200:
                return response.json()
        except httpx.HTTPError as error:
            last = repr(error)
        time.sleep(0.2)
    raise AssertionError(f"not healthy within {timeout_s} s: {last}")


def reports_no_generator(service: Service, timeout_s: float = 15) -> dict:
    """Poll /health until it answers 503 with no generator ready (Serve notices a dead replica at its next health check)."""
    deadline = time.monotonic() + timeout_s
    while (response := httpx.get(f"{service.url}/health", timeout=5)).status_code == 200:
        assert time.monotonic() < deadline, f"/health still healthy {timeout_s} s after the generator died: {response.text}"
        time.sleep(0.1)
    assert response.status_code == 503 and response.json()["generators"]["ready"] == 0, response.text
    return response.json()


def completes(service: Service) -> None:
    response = httpx.post(f"{service.url}/generate", json=SHORT, timeout=60)
    assert response.status_code == 200, f"expected a completed request, got {response.status_code}: {response.text[:300]}"


@pytest.fixture
def held(faults: Service) -> Iterator[BackgroundStream]:
    """A long generation holding the app's only generator."""
    healthy_again(faults)
    stream = BackgroundStream(f"{faults.url}/generate-stream", LONG)
    stream.wait_for("progress")
    yield stream
    stream.leave()


def stalled_upload(url: str) -> socket.socket:
    """Headers announcing 1000 bytes of body, then 11 of them, then nothing."""
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    path = "/" + url.removeprefix("http://").split("/", 1)[1] + "/generate-stream"
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    sock.sendall(head.encode() + b'{"prompt": ')
    return sock


def timed_health(url: str) -> tuple[float, int, dict]:
    """One /health call: seconds it took, status and body."""
    began = time.monotonic()
    response = httpx.get(f"{url}/health", timeout=10)
    return time.monotonic() - began, response.status_code, response.json()


def assert_fast(seconds: list[float], what: str) -> None:
    """Under 1 s as a rule (the median), and never near the seconds a queued /health used to take: the bound on the
    slowest call leaves room for a busy 2-core machine."""
    assert statistics.median(seconds) < 1.0 and max(seconds) < 3.0, f"{what}: expected a median under 1 s, took {sorted(seconds)}"


def test_stalled_uploads_do_not_block_health_or_other_clients(faults: Service) -> None:
    healthy_again(faults)
    sockets = [stalled_upload(faults.url) for _ in range(150)]
    try:
        answers = [timed_health(faults.url) for _ in range(5)]
        assert all(status == 200 for _, status, _ in answers), f"expected /health 200 every time, got {answers}"
        assert_fast([elapsed for elapsed, _, _ in answers], "/health behind 150 stalled uploads")
        completes(faults)
        statuses = []
        for sock in sockets:
            sock.settimeout(OPTIONS.body_timeout_s + 20)
            statuses.append(sock.recv(4096).split(b"\r\n", 1)[0])
        assert set(statuses) == {b"HTTP/1.1 408 Request Timeout"}, f"expected 408 for every stalled upload, got {set(statuses)}"
    finally:
        for sock in sockets:
            sock.close()


def _urllib(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def _requests(url: str, body: bytes) -> tuple[int, dict]:
    response = requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=30)
    return response.status_code, response.json()


def _httpx(url: str, body: bytes) -> tuple[int, dict]:
    response = httpx.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=30)
    return response.status_code, response.json()


def _httpx_chunked(url: str, body: bytes) -> tuple[int, dict]:
    """No Content-Length: the size shows only while the body is read."""
    chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
    response = httpx.post(url, content=chunks, headers={"Content-Type": "application/json"}, timeout=30)
    return response.status_code, response.json()


def _curl(url: str, body: bytes) -> tuple[int, dict]:
    result = subprocess.run(
        ["curl", "-sS", "-w", "\n%{http_code}", "-H", "Content-Type: application/json", "--data-binary", "@-", url],
        input=body, capture_output=True, timeout=30, check=True,
    )
    text, status = result.stdout.decode().rsplit("\n", 1)
    return int(status), json.loads(text)


@pytest.mark.parametrize("send", [_urllib, _requests, _httpx, _httpx_chunked, _curl], ids=["urllib", "requests", "httpx", "httpx-chunked", "curl"])
def test_every_client_reads_the_413(faults: Service, send) -> None:
    body = json.dumps({"prompt": "x" * (MAX_BODY + 10)}).encode()
    status, answer = send(f"{faults.url}/generate-stream", body)
    assert (status, answer["error"]["code"]) == (413, "body_too_large"), f"expected 413 body_too_large, got {status} {answer}"


def test_queued_requests_are_told_and_health_stays_fast(faults: Service, held: BackgroundStream) -> None:
    first = BackgroundStream(f"{faults.url}/generate-stream", SHORT)
    began = time.monotonic()
    queued = first.wait_for("queued", timeout_s=5)
    assert queued.received - began < 1.0, f"the queued event took {queued.received - began:.2f} s"
    assert queued.data["ahead"] == 0, queued.data
    second = BackgroundStream(f"{faults.url}/generate-stream-chunked", SHORT)
    assert second.wait_for("queued", timeout_s=5).data["ahead"] == 1, "the second queued request has one ahead of it"

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: timed_health(faults.url), range(8)))
    for _, status, body in answers:
        assert status == 200 and body["generators"]["ready"] == 1 and body["queued"] == 2, f"/health with the generator busy: {status} {body}"
    assert_fast([elapsed for elapsed, _, _ in answers], "8 concurrent /health calls with the generator busy")

    held.leave()  # the generator frees up: both queued requests start and complete
    first.wait_for("start", timeout_s=30)
    first.wait_for("complete", timeout_s=30)
    second.wait_for("completed", timeout_s=30)


def test_a_request_queued_too_long_gets_queue_timeout(faults: Service, held: BackgroundStream) -> None:
    waiting = BackgroundStream(f"{faults.url}/generate-stream", SHORT)
    queued = waiting.wait_for("queued", timeout_s=5)
    error = waiting.wait_for("error", timeout_s=OPTIONS.max_queue_wait_s + 5)
    assert error.data["error"]["code"] == "queue_timeout", error.data
    waited = error.received - queued.received
    assert OPTIONS.max_queue_wait_s - 1 < waited < OPTIONS.max_queue_wait_s + 2, f"queue_timeout after {waited:.1f} s"


def test_a_cancel_never_lets_two_generations_overlap(faults: Service) -> None:
    healthy_again(faults)
    for _ in range(3):
        next_id = uuid.uuid4().hex  # request ids are unique while their request is retained
        leaving = BackgroundStream(f"{faults.url}/generate-stream", LONG)
        leaving.wait_for("progress")
        leaving.leave()  # mid-step: the step goes on for up to STEP_S after the cancel
        completes_id = BackgroundStream(f"{faults.url}/generate-stream", SHORT, headers={"X-Request-ID": next_id})
        completes_id.wait_for("complete", timeout_s=30)
        status = faults.generator().request_status.remote(next_id).result(timeout_s=30)
        assert status["others_running_at_start"] == 0, f"a generation started while a cancelled one still ran: {status}"


def test_a_killed_generator_ends_the_stream_with_an_error_and_is_replaced(faults: Service, held: BackgroundStream) -> None:
    ray.kill(replica_actor(faults, "AvatarGenerator"), no_restart=True)
    error = held.wait_for("error", timeout_s=30)
    assert error.data["error"]["code"] == "replica_lost", error.data
    assert reports_no_generator(faults)["status"] in ("loading", "unhealthy")
    assert healthy_again(faults)["generators"]["ready"] == 1
    completes(faults)


def test_a_frozen_generator_ends_the_stream_with_replica_stalled(faults: Service, held: BackgroundStream) -> None:
    pid = ray.get(replica_actor(faults, "AvatarGenerator").__ray_call__.remote(lambda actor: os.getpid()), timeout=30)
    os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        error = held.wait_for("error", timeout_s=60)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert error.data["error"]["code"] == "replica_stalled", error.data
    waited = error.received - stopped
    assert waited < OPTIONS.stall_timeout_s + HEALTH_PERIOD_S + 1, f"replica_stalled came {waited:.1f} s after the freeze"
    healthy_again(faults)
    completes(faults)


def test_a_hung_generation_fails_check_health_and_its_replica_is_replaced(faults: Service) -> None:
    healthy_again(faults)
    hung = BackgroundStream(f"{faults.url}/generate-stream", {**SHORT, "prompt": HANG})
    hung.wait_for("start")
    error = hung.wait_for("error", timeout_s=OPTIONS.stall_timeout_s + 10)
    assert error.data["error"]["code"] == "replica_stalled", error.data
    reports_no_generator(faults, timeout_s=OPTIONS.stall_timeout_s + 4 * HEALTH_PERIOD_S + 10)  # 3 failed checks
    healthy_again(faults)
    completes(faults)


def test_a_killed_ingress_stops_its_generation(faults: Service) -> None:
    """Last in this module: the app's ingress is restarted afterwards."""
    healthy_again(faults)
    request_id = uuid.uuid4().hex
    stream = BackgroundStream(f"{faults.url}/generate-stream", LONG, headers={"X-Request-ID": request_id})
    stream.wait_for("progress")
    ray.kill(replica_actor(faults, "AvatarIngress"), no_restart=True)
    killed = time.monotonic()
    status = faults.generator().request_status.remote(request_id).result(timeout_s=60)  # queued behind the generation
    stopped_after = time.monotonic() - killed
    assert status["state"] == "cancelled" and status["steps"] < LONG["num_steps"], f"the orphaned generation went on: {status}"
    assert stopped_after < 2 * OPTIONS.orphan_check_s + STEP_S + 4, f"the orphaned generation stopped {stopped_after:.1f} s after"
    stream.leave()
    healthy_again(faults)


def health_or_none(url: str) -> httpx.Response | None:
    """GET /health, or None when it timed out (a new app's proxy route may wait for its first ingress replica)."""
    try:
        return httpx.get(url, timeout=10)
    except httpx.TimeoutException:
        return None


def test_a_loading_generator_is_not_routable_and_requests_wait_for_it(base_url: str, tmp_path: Path) -> None:
    """Serve routes to a replica once its async __init__ returned: after the load and warm-up, not before."""
    loaded = tmp_path / "loaded"
    args = AppArgs.from_serve_config()
    config = load_model_config(args.config, {"options": {"blocking_step_s": 0.0, "loaded_when": str(loaded)}})
    generator = AvatarGenerator.options(name="AvatarGenerator", num_replicas=1, ray_actor_options={"num_cpus": 1}).bind(
        config, args.encoding, backend_cls=BlockingStepPreviewBackend, options=OPTIONS
    )
    app = bind_ingress(generator, config, args.limits, StreamOptions(max_queue_wait_s=60), ingress=args.ingress)
    serve.run_many([serve.RunTarget(app, name="loading", route_prefix="/loading")], wait_for_applications_running=False)
    url = f"{base_url}/loading"
    try:
        deadline = time.monotonic() + 60
        while (health := health_or_none(f"{url}/health")) is None or health.headers.get("content-type") != "application/json":
            assert time.monotonic() < deadline, f"the ingress did not start: {health and (health.status_code, health.text)}"
            time.sleep(0.1)  # the ingress replica is still starting (the proxy may hold the call meanwhile)
        body = health.json()
        assert health.status_code == 503 and body["status"] == "loading" and body["generators"]["starting"] == 1, body
        waiting = BackgroundStream(f"{url}/generate-stream", SHORT)
        waiting.wait_for("queued", timeout_s=5)
        loaded.touch()
        waiting.wait_for("start", timeout_s=60)
        waiting.wait_for("complete", timeout_s=30)
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    finally:
        serve.delete("loading")
