"""Bad input gets a JSON error with the right status over real HTTP, and the service stays healthy; a stream
that fails mid-way ends with an error event."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.helpers import audio_file, b64, speech_like
from tests.integration.backends import ENCODER_FAILURE
from tests.integration.conftest import Service
from tests.integration.streams import after_queued, ndjson_events, sse_events

WAV = audio_file(speech_like(1.0), 16000)
JSON = {"Content-Type": "application/json"}

BAD_REQUESTS = [
    ("not json", b"{prompt: hello", JSON, 400, "invalid_json", None),
    ("a JSON array", b'[{"prompt": "hello"}]', JSON, 400, "invalid_json", None),
    ("wrong content type", b'{"prompt": "hello"}', {"Content-Type": "text/plain"}, 415, "unsupported_media_type", None),
    ("missing prompt", b'{"seed": 1}', JSON, 422, "missing_field", "prompt"),
    ("unknown field", b'{"prompt": "hi", "fps": 30}', JSON, 422, "unknown_field", "fps"),
    ("bad base64", b'{"prompt": "hi", "image_base64": "%%%"}', JSON, 422, "invalid_base64", "image_base64"),
    ("text file as image", f'{{"prompt": "hi", "image_base64": "{b64(b"hello, world")}"}}'.encode(), JSON, 422, "invalid_image", "image_base64"),
    ("truncated audio", f'{{"prompt": "hi", "audio_base64": "{b64(WAV[:5000])}"}}'.encode(), JSON, 422, "invalid_audio", "audio_base64"),
    ("steps out of range", b'{"prompt": "hi", "num_steps": 1000}', JSON, 422, "invalid_field", "num_steps"),
    ("seed out of range", b'{"prompt": "hi", "seed": -5}', JSON, 422, "invalid_field", "seed"),
    ("steps of the wrong type", b'{"prompt": "hi", "num_steps": "four"}', JSON, 422, "invalid_field", "num_steps"),
    ("guidance of the wrong type", b'{"prompt": "hi", "guidance_scale": [4]}', JSON, 422, "invalid_field", "guidance_scale"),
    ("overlap not 1 + 4n", b'{"prompt": "hi", "overlap_frame": 10}', JSON, 422, "invalid_field", "overlap_frame"),
    ("overlap longer than a segment", b'{"prompt": "hi", "overlap_frame": 61}', JSON, 422, "invalid_field", "overlap_frame"),
]


@pytest.mark.parametrize("route", ["generate-stream", "generate-stream-chunked", "generate"])
@pytest.mark.parametrize(("case", "raw", "headers", "status", "code", "field"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_input(service: Service, client: httpx.Client, route, case, raw, headers, status, code, field) -> None:
    response = client.post(f"{service.url}/{route}", content=raw, headers=headers)
    assert response.headers["content-type"] == "application/json", f"{case}: a JSON body, got {response.headers['content-type']}"
    body = response.json()
    assert response.status_code == status, f"{case}: expected {status}, got {response.status_code} {body}"
    assert body["success"] is False and body["error"]["code"] == code and body["error"]["field"] == field, body
    assert "Traceback" not in body["error"]["message"] and len(body["error"]["message"]) > 10


def test_oversized_body(paced: Service, client: httpx.Client) -> None:
    """The paced app's limit is 1 MiB: a 2 MiB body is refused with 413 without being read."""
    raw = b'{"prompt": "hi", "image_base64": "' + b"A" * (2 << 20) + b'"}'
    response = client.post(f"{paced.url}/generate-stream", content=raw, headers=JSON)
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large", response.text


def test_healthy_after_bad_input(service: Service, client: httpx.Client) -> None:
    for _, raw, headers, *_ in BAD_REQUESTS:
        client.post(f"{service.url}/generate-stream", content=raw, headers=headers)
    response = client.get(f"{service.url}/health")
    assert response.status_code == 200 and response.json()["status"] == "healthy"
    ok = client.post(f"{service.url}/generate", json={"prompt": "hi", "num_frames": 5, "height": 128, "width": 128})
    assert ok.status_code == 200, ok.text


def test_unknown_route_is_a_json_404(service: Service, client: httpx.Client) -> None:
    response = client.get(f"{service.url}/generate-video")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


REQUEST = {"prompt": "hi", "num_frames": 120, "height": 720, "width": 720, "num_steps": 1}  # 3 segments


def test_failure_mid_stream_ends_with_an_error_event(failing: Service, client: httpx.Client) -> None:
    with client.stream("POST", f"{failing.url}/generate-stream", json=REQUEST) as response:
        assert response.status_code == 200
        events = after_queued(list(sse_events(response)))  # reads to a clean end of the body: no truncated chunked stream
    names = [e.name for e in events]
    assert names[0] == "start" and names[-1] == "error" and "complete" not in names, names
    assert [e.data["segment_index"] for e in events if e.name == "segment"] == [0]
    error = events[-1].data["error"]
    request_id = response.headers.get_list("x-request-id")
    assert len(request_id) == 1, f"expected one X-Request-ID header, got {request_id}"
    assert error["code"] == "generation_failed" and request_id[0] in error["message"], error
    assert "synthetic" not in error["message"], f"the exception text belongs in the log, not the answer: {error}"


def test_encoder_failure_is_recorded_as_failed(failing: Service, client: httpx.Client) -> None:
    request_id = uuid.uuid4().hex
    body = {**REQUEST, "prompt": ENCODER_FAILURE}
    with client.stream("POST", f"{failing.url}/generate-stream", json=body, headers={"X-Request-ID": request_id}) as response:
        events = list(sse_events(response))
    assert events[-1].name == "error" and events[-1].data["error"]["code"] == "generation_failed", events[-1]
    status = failing.generator().request_status.remote(request_id).result(timeout_s=30)
    assert status["state"] == "failed", f"expected the record to say failed, got {status}"


def test_failure_mid_stream_ndjson_and_whole_video(failing: Service, client: httpx.Client) -> None:
    with client.stream("POST", f"{failing.url}/generate-stream-chunked", json=REQUEST) as response:
        last = list(ndjson_events(response))[-1]
    assert last.name == "error" and last.data["final"] is True and last.data["error"]["code"] == "generation_failed", last.data
    response = client.post(f"{failing.url}/generate", json=REQUEST)
    assert response.status_code == 500 and response.json()["error"]["code"] == "generation_failed", response.text
    assert len(response.headers.get_list("x-request-id")) == 1, response.headers
