"""Reading the service's streams event by event, as a client does."""

from __future__ import annotations

import base64
import io
import json
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


def sse_events(response: httpx.Response) -> Iterator[Event]:
    """SSE events from a streaming response (comments are skipped, data lines joined)."""
    name, data = "message", []
    for line in response.iter_lines():
        if line.startswith(":"):
            continue
        if not line:
            if data:
                yield Event(name, json.loads("\n".join(data)))
            name, data = "message", []
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
                results[route] = list(reader(response))
    return results
