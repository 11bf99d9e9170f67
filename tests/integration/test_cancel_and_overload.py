"""A client that leaves stops the generation within a step; a full queue answers 503 with Retry-After at once."""

from __future__ import annotations

import threading
import time
import uuid

import httpx

from tests.integration.conftest import Service, wait_for_status
from tests.integration.streams import sse_events

LONG = {"prompt": "hi", "num_frames": 2000, "height": 720, "width": 720, "num_steps": 4}  # ~45 segments, ~18 s paced


def test_disconnect_stops_the_backend_within_a_step(paced: Service) -> None:
    request_id = uuid.uuid4().hex
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", f"{paced.url}/generate-stream", json=LONG, headers={"X-Request-ID": request_id}) as response:
            for event in sse_events(response):
                if event.name == "progress" and event.data["step"] == 2:
                    break  # leave mid-segment: closing the response closes the connection
    status = wait_for_status(paced, request_id, "cancelled")
    assert status["cancel_requested"] and status["segments"] == 0, status
    assert status["steps_after_cancel"] <= 1, f"the backend went on for {status['steps_after_cancel']} steps after the client left"
    assert status["steps"] <= 4, f"segment 0 has 4 steps; {status['steps']} were done"


def test_full_queue_gets_a_fast_503(paced: Service) -> None:
    """One generation running and one queued (max_ongoing_requests 1, max_queued_requests 1): the next is refused."""
    started = threading.Event()
    stop = threading.Event()

    def hold_stream() -> None:
        with httpx.Client(timeout=60) as http, http.stream("POST", f"{paced.url}/generate-stream", json=LONG) as response:
            for event in sse_events(response):
                started.set()
                if stop.is_set():
                    return

    holders = [threading.Thread(target=hold_stream, daemon=True) for _ in range(2)]
    holders[0].start()
    assert started.wait(30), "the first stream should start"
    holders[1].start()
    time.sleep(1.0)  # let the second request reach the queue
    try:
        with httpx.Client(timeout=30) as http:
            began = time.monotonic()
            response = http.post(f"{paced.url}/generate-stream", json=LONG)
            elapsed = time.monotonic() - began
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "overloaded" and int(response.headers["Retry-After"]) > 0
        assert elapsed < 0.5, f"the 503 took {elapsed:.2f} s"
    finally:
        stop.set()
        for holder in holders:
            holder.join(timeout=30)
    health = httpx.get(f"{paced.url}/health", timeout=10)
    assert health.status_code == 200, health.text
