"""Wire framing of docs/protocol.md: the same events as Server-Sent Events or as NDJSON lines."""

from __future__ import annotations

import json
from typing import Any, Protocol


def sse_event(name: str, data: dict[str, Any]) -> bytes:
    """One SSE event whose data is a single-line JSON object."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def ndjson_line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


class Framing(Protocol):
    """How one route writes the stream's events."""

    media_type: str
    keepalive: bytes

    def queued(self, payload: dict[str, Any]) -> bytes: ...
    def start(self, payload: dict[str, Any]) -> bytes: ...
    def progress(self, payload: dict[str, Any]) -> bytes: ...
    def segment(self, payload: dict[str, Any]) -> bytes: ...
    def complete(self, payload: dict[str, Any]) -> bytes: ...
    def error(self, error: dict[str, Any]) -> bytes: ...


class SseFraming:
    """`text/event-stream`: events queued, start, progress, segment, complete or error; comments keep it alive."""

    media_type = "text/event-stream"
    keepalive = b": keep-alive\n\n"

    def queued(self, payload: dict[str, Any]) -> bytes:
        return sse_event("queued", payload)

    def start(self, payload: dict[str, Any]) -> bytes:
        return sse_event("start", payload)

    def progress(self, payload: dict[str, Any]) -> bytes:
        return sse_event("progress", payload)

    def segment(self, payload: dict[str, Any]) -> bytes:
        return sse_event("segment", payload)

    def complete(self, payload: dict[str, Any]) -> bytes:
        return sse_event("complete", payload)

    def error(self, error: dict[str, Any]) -> bytes:
        return sse_event("error", {"error": error})


class NdjsonFraming:
    """`application/x-ndjson`: one object per line with a `status`; empty lines keep it alive."""

    media_type = "application/x-ndjson"
    keepalive = b"\n"

    def queued(self, payload: dict[str, Any]) -> bytes:
        return ndjson_line({"status": "queued", **payload})

    def start(self, payload: dict[str, Any]) -> bytes:
        return ndjson_line({"status": "started", "streaming": True, **payload})

    def progress(self, payload: dict[str, Any]) -> bytes:
        return ndjson_line({"status": "progress", **payload})

    def segment(self, payload: dict[str, Any]) -> bytes:
        return ndjson_line({"status": "segment", **payload})

    def complete(self, payload: dict[str, Any]) -> bytes:
        return ndjson_line({"status": "completed", **payload, "final": True})

    def error(self, error: dict[str, Any]) -> bytes:
        return ndjson_line({"status": "error", "error": error, "final": True})
