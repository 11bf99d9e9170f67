"""Reading the service's streams event by event, as a client does."""

from __future__ import annotations

import base64
import io
import json
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import av
import httpx
import numpy as np


@dataclass
class Event:
    name: str
    data: dict[str, Any]
    received: float = field(default_factory=time.monotonic)
    event_id: str | None = None  # the SSE `id:` line


def sse_events(response: httpx.Response) -> Iterator[Event]:
    """SSE events from a streaming response (comments are skipped, data lines joined)."""
    name, data, event_id = "message", [], None
    for line in response.iter_lines():
        if line.startswith(":"):
            continue
        if not line:
            if data:
                yield Event(name, json.loads("\n".join(data)), event_id=event_id)
            name, data, event_id = "message", [], None
        elif line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


def ndjson_events(response: httpx.Response) -> Iterator[Event]:
    """NDJSON lines as events named by their status; empty lines (keep-alives) are skipped."""
    for line in response.iter_lines():
        if line.strip():
            data = json.loads(line)
            yield Event(data["status"], data)


def segment_bytes(event: Event) -> bytes:
    return base64.b64decode(event.data["segment_base64"])


def decode_frames(mp4: bytes) -> np.ndarray:
    with av.open(io.BytesIO(mp4)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def stream_types(mp4: bytes) -> list[str]:
    with av.open(io.BytesIO(mp4)) as container:
        return sorted(s.type for s in container.streams)


def after_queued(events: list[Event]) -> list[Event]:
    """The events from `start` on: a stream may begin with `queued` events (on a loaded machine even when a
    generator is free), and only there."""
    started = next((i for i, e in enumerate(events) if e.name != "queued"), len(events))
    rest = events[started:]
    assert all(e.name != "queued" for e in rest), f"queued after the start: {[e.name for e in events]}"
    return rest


ROUTES = {"generate-stream": sse_events, "generate-stream-chunked": ndjson_events}


def stream_both_ways(url: str, body: dict[str, Any]) -> dict[str, list[Event]]:
    """The same request over SSE and over NDJSON, each read to its end: route -> events."""
    results = {}
    with httpx.Client(timeout=300) as http:
        for route, reader in ROUTES.items():
            with http.stream("POST", f"{url}/{route}", json=body) as response:
                assert response.status_code == 200, response.read()
                expected = "text/event-stream" if reader is sse_events else "application/x-ndjson"
                assert response.headers["content-type"].startswith(expected), response.headers["content-type"]
                results[route] = after_queued(list(reader(response)))
    return results


class BackgroundStream:
    """A streaming request read on a thread, its events into a queue (SSE events by name, NDJSON lines by their
    status, keep-alives as `keepalive`), for tests that act while streams run. `leave()` disconnects at the
    next line the server sends."""

    def __init__(self, url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self.events: queue.Queue[Event] = queue.Queue()
        self._leave = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(url, body, headers or {}), daemon=True)
        self._thread.start()

    def _read(self, url: str, body: dict[str, Any], headers: dict[str, str]) -> None:
        try:
            with httpx.Client(timeout=120) as http, http.stream("POST", url, json=body, headers=headers) as response:
                if response.status_code != 200:
                    self.events.put(Event("http_error", {"status": response.status_code, "body": response.read().decode()}))
                    return
                ndjson = response.headers["content-type"].startswith("application/x-ndjson")
                name = "message"
                for line in response.iter_lines():
                    if self._leave.is_set():
                        return
                    if ndjson:
                        self.events.put(Event(json.loads(line)["status"], json.loads(line)) if line.strip() else Event("keepalive", {}))
                    elif line.startswith(":"):
                        self.events.put(Event("keepalive", {}))
                    elif line.startswith("event:"):
                        name = line[6:].strip()
                    elif line.startswith("data:"):
                        self.events.put(Event(name, json.loads(line[5:])))
            self.events.put(Event("end", {}))
        except httpx.HTTPError as error:
            self.events.put(Event("connection_error", {"error": repr(error)}))

    def wait_for(self, name: str, timeout_s: float = 60) -> Event:
        """The next event called `name` (skipping others); AssertionError if the stream ends or time runs out."""
        deadline = time.monotonic() + timeout_s
        seen = []
        while True:
            try:
                event = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {name!r} event within {timeout_s} s; saw {seen[-5:]}") from None
            if event.name == name:
                return event
            seen.append((event.name, event.data))
            if event.name in ("end", "connection_error", "http_error", "error", "complete", "completed"):
                raise AssertionError(f"expected a {name!r} event; the stream ended with {event.name}: {event.data}")

    def leave(self, timeout_s: float = 30) -> None:
        self._leave.set()
        self._thread.join(timeout_s)
