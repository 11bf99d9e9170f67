"""Streams that survive the connection: event ids, resume by Last-Event-ID or `after`, resume through a new
ingress replica, DELETE, the grace after the last client left, and the API key that owns a request.

The `resumable` app runs the preview at a model's pace with authentication on; its frames are compared with
those of /generate for the same request."""

from __future__ import annotations

from collections.abc import Iterator

import base64
import dataclasses
import time
import uuid

import httpx
import numpy as np
import pytest
import ray

from deployments.app import AppArgs, build_app
from deployments.auth import AuthOptions
from tests.integration.conftest import Service, deployed, wait_for_status
from tests.integration.streams import Event, decode_frames, ndjson_events, segment_bytes, sse_events

KEY, OTHER_KEY = "resume-key-1", "resume-key-2"
AUTH = {"Authorization": f"Bearer {KEY}"}
REQUEST = {"prompt": "hi", "num_frames": 145, "height": 720, "width": 720, "num_steps": 2, "seed": 7}  # 3 segments
LONG = {"prompt": "hi", "num_frames": 2000, "height": 720, "width": 720, "num_steps": 4}  # ~45 segments
STEP_S = 0.05


@pytest.fixture(scope="module")
def resumable(base_url: str) -> Iterator[Service]:
    args = AppArgs.from_serve_config(
        options={"seconds_per_step": STEP_S},
        auth=AuthOptions(enabled=True, keys_env="RESUME_TEST_KEYS"),
        ingress={"ray_actor_options": {"num_cpus": 0, "runtime_env": {"env_vars": {"RESUME_TEST_KEYS": f"{KEY},{OTHER_KEY}"}}}},
        generator={"num_replicas": 1, "max_ongoing_requests": 1, "max_queued_requests": 4, "ray_actor_options": {"num_cpus": 1}},
    )
    assert args.stream.resume_grace_s == 30, f"the shipped config's grace is 30 s, found {args.stream.resume_grace_s}"
    with deployed(build_app(args), base_url, "resumable", "/resumable") as service:
        yield service


@pytest.fixture(scope="module")
def whole_frames(resumable: Service) -> np.ndarray:
    with httpx.Client(timeout=120) as http:
        response = http.post(f"{resumable.url}/generate", json=REQUEST, headers=AUTH)
    assert response.status_code == 200, f"expected 200 from /generate, got {response.status_code}: {response.text[:300]}"
    return decode_frames(base64.b64decode(response.json()["video_base64"]))


def joined_frames(events: list[Event]) -> np.ndarray:
    return np.concatenate([decode_frames(segment_bytes(event)) for event in events if event.name == "segment"])


def read_until_first_segment(url: str, body: dict, route: str, reader) -> list[Event]:
    """The events up to and including segment 0, then the connection is dropped."""
    received = []
    with httpx.Client(timeout=120) as http, http.stream("POST", f"{url}/{route}", json=body, headers=AUTH) as response:
        assert response.status_code == 200, f"expected 200, got {response.status_code}: {response.read()[:300]!r}"
        for event in reader(response):
            received.append(event)
            if event.name == "segment":
                break
    return received


def test_sse_resume_with_last_event_id_gives_the_frames_of_generate(resumable: Service, whole_frames: np.ndarray) -> None:
    before = read_until_first_segment(resumable.url, REQUEST, "generate-stream", sse_events)
    start = next(event for event in before if event.name == "start")
    request_id = start.data["request_id"]
    assert start.data["resume_url"] == f"/resumable/streams/{request_id}", f"start should say where to resume, got {start.data}"
    ids = [event.event_id for event in before]
    assert all(i is not None and i.startswith(f"{request_id}:") for i in ids), f"every event needs id <request_id>:<seq>, got {ids}"
    seqs = [int(i.rpartition(":")[2]) for i in ids]
    assert seqs == sorted(set(seqs)), f"seqs must increase, got {seqs}"
    with httpx.Client(timeout=120) as http:
        headers = {**AUTH, "Last-Event-ID": before[-1].event_id}
        with http.stream("GET", resumable.url + start.data["resume_url"].removeprefix("/resumable"), headers=headers) as response:
            assert response.status_code == 200, f"expected the resumed stream, got {response.status_code}: {response.read()[:300]!r}"
            after = list(sse_events(response))
    assert after[-1].name == "complete", f"the resumed stream should end with complete, got {[e.name for e in after]}"
    assert all(int(e.event_id.rpartition(":")[2]) > seqs[-1] for e in after), "the resumed stream replays only what came after"
    np.testing.assert_array_equal(joined_frames(before + after), whole_frames, err_msg="joined segments differ from /generate's frames")


def test_ndjson_resume_with_after_gives_the_frames_of_generate(resumable: Service, whole_frames: np.ndarray) -> None:
    before = read_until_first_segment(resumable.url, REQUEST, "generate-stream-chunked", ndjson_events)
    request_id = before[-1].data.get("request_id") or next(e.data["request_id"] for e in before if e.name == "started")
    last_seq = before[-1].data["seq"]
    assert [e.data["seq"] for e in before] == sorted({e.data["seq"] for e in before}), "every line needs an increasing seq"
    with httpx.Client(timeout=120) as http:
        url = f"{resumable.url}/streams/{request_id}?format=ndjson&after={last_seq}"
        with http.stream("GET", url, headers=AUTH) as response:
            assert response.headers["content-type"].startswith("application/x-ndjson"), response.headers
            after = list(ndjson_events(response))
    assert after[-1].name == "completed", f"expected completed last, got {[e.name for e in after]}"
    np.testing.assert_array_equal(joined_frames(before + after), whole_frames, err_msg="joined NDJSON segments differ from /generate's")


def test_another_key_cannot_resume_fetch_or_cancel(resumable: Service, client: httpx.Client) -> None:
    response = client.post(f"{resumable.url}/jobs", json=REQUEST, headers=AUTH)
    assert response.status_code == 202, f"expected 202, got {response.status_code}: {response.text}"
    request_id = response.json()["request_id"]
    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    for method, path in (("GET", f"/streams/{request_id}"), ("GET", f"/jobs/{request_id}"), ("GET", f"/videos/{request_id}"), ("DELETE", f"/streams/{request_id}")):
        answer = client.request(method, resumable.url + path, headers=other)
        assert answer.status_code == 404, f"{method} {path} with another key: expected 404, got {answer.status_code}: {answer.text}"
        assert answer.json()["error"]["code"] == "unknown_request", answer.text
    mine = client.get(f"{resumable.url}/jobs/{request_id}", headers=AUTH)
    assert mine.status_code == 200, f"the creating key sees its job, got {mine.status_code}: {mine.text}"
    for headers, params, code in (({"Last-Event-ID": "other-id:3"}, {}, "invalid_last_event_id"), ({}, {"after": "x"}, "invalid_after")):
        bad = client.get(f"{resumable.url}/streams/{request_id}", headers={**AUTH, **headers}, params=params)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == code, f"expected 400 {code}, got {bad.status_code}: {bad.text}"


def test_delete_stops_the_work_within_a_step(resumable: Service, client: httpx.Client) -> None:
    request_id = uuid.uuid4().hex
    with client.stream("POST", f"{resumable.url}/generate-stream", json=LONG, headers={**AUTH, "X-Request-ID": request_id}) as response:
        events = sse_events(response)
        for event in events:
            if event.name == "progress":
                break
        deleted = client.delete(f"{resumable.url}/streams/{request_id}", headers=AUTH)
        assert deleted.status_code == 200 and deleted.json()["state"] == "cancelled", f"expected cancelled, got {deleted.text}"
        rest = list(events)
    assert rest and rest[-1].name == "error" and rest[-1].data["error"]["code"] == "cancelled", f"expected the error event cancelled, got {rest[-1:]}"
    status = wait_for_status(resumable, request_id, "cancelled")
    assert status["steps_after_cancel"] <= 1, f"the backend went on for {status['steps_after_cancel']} steps after DELETE"


def test_resume_through_a_new_ingress_replica(resumable: Service) -> None:
    """The ingress replica that accepted the request dies mid-stream; Serve starts another and the client
    resumes through the proxy, from the last event it has, to the end."""
    body = {**REQUEST, "num_frames": 233}  # 5 segments
    before = read_until_first_segment(resumable.url, body, "generate-stream", sse_events)
    request_id = before[-1].event_id.rpartition(":")[0]
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if f"{resumable.app_name}#AvatarIngress" in a["name"]]
    assert len(names) == 1, f"expected one ingress replica, found {names}"
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    deadline, after = time.monotonic() + 90, None
    with httpx.Client(timeout=60) as http:
        while after is None:
            assert time.monotonic() < deadline, "no ingress answered the resume within 90 s"
            try:
                with http.stream("GET", f"{resumable.url}/streams/{request_id}", headers={**AUTH, "Last-Event-ID": before[-1].event_id}) as response:
                    if response.status_code == 200:
                        after = list(sse_events(response))
            except httpx.HTTPError:
                pass
            if after is None:
                time.sleep(0.5)
    assert after[-1].name == "complete", f"expected the resumed stream to complete, got {[e.name for e in after][-3:]}"
    joined = joined_frames(before + after)
    assert len(joined) == 233, f"expected 233 frames across the drop, got {len(joined)}"


@pytest.fixture(scope="module")
def brief(base_url: str) -> Iterator[Service]:
    """A 1 s grace and no room to retain anything: a finished request is evicted at once."""
    args = AppArgs.from_serve_config(
        options={"seconds_per_step": STEP_S},
        generator={"num_replicas": 1, "max_ongoing_requests": 1, "ray_actor_options": {"num_cpus": 1}},
    )
    args = args.model_copy(update={"stream": dataclasses.replace(args.stream, resume_grace_s=1.0, max_retained_bytes=0)})
    with deployed(build_app(args), base_url, "brief", "/brief") as service:
        yield service


def test_grace_expiry_cancels(brief: Service, client: httpx.Client) -> None:
    request_id = uuid.uuid4().hex
    with client.stream("POST", f"{brief.url}/generate-stream", json=LONG, headers={"X-Request-ID": request_id}) as response:
        for event in sse_events(response):
            if event.name == "progress":
                left = time.monotonic()
                break
    running = client.get(f"{brief.url}/jobs/{request_id}").json()
    assert running["state"] == "running", f"within the grace the request runs on, got {running}"
    status = wait_for_status(brief, request_id, "cancelled")
    waited = time.monotonic() - left
    assert waited >= 1.0, f"cancelled {waited:.2f} s after the client left, before the 1 s grace"
    assert status["steps_after_cancel"] <= 1, f"the backend went on for {status['steps_after_cancel']} steps after the grace"


def test_unknown_and_evicted_ids_are_404_saying_which(brief: Service, client: httpx.Client) -> None:
    unknown = client.get(f"{brief.url}/videos/{uuid.uuid4().hex}")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_request", f"expected 404 unknown_request, got {unknown.text}"
    response = client.post(f"{brief.url}/generate", json={**REQUEST, "num_frames": 9, "height": 128, "width": 128})
    assert response.status_code == 200, response.text[:300]
    request_id = response.json()["request_id"]
    for path in (f"/videos/{request_id}", f"/jobs/{request_id}", f"/streams/{request_id}"):
        evicted = client.get(brief.url + path)
        assert evicted.status_code == 404, f"{path}: expected 404 once evicted, got {evicted.status_code}: {evicted.text}"
        assert evicted.json()["error"]["code"] == "request_evicted", f"{path}: expected request_evicted, got {evicted.text}"
