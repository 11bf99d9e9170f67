"""Wire framing of docs/protocol.md: the same events as Server-Sent Events or as NDJSON lines, each with its
place in the request's stream (the SSE `id` `<request_id>:<seq>`, the NDJSON `seq`) to resume from."""

from __future__ import annotations

import json
from typing import Any, Protocol


def sse_event(name: str, data: dict[str, Any], event_id: str | None = None) -> bytes:
    """One SSE event whose data is a single-line JSON object."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def ndjson_line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


class Framing(Protocol):
    """How one route writes the stream's events: `kind` is queued, start, progress, segment, complete or
    error; `seq` is None for an error of the ingress itself, which has no place in the stream's log."""

    media_type: str
    keepalive: bytes

    def event(self, kind: str, payload: dict[str, Any], request_id: str, seq: int | None) -> bytes: ...


class SseFraming:
    """`text/event-stream`: events queued, start, progress, segment, complete or error; comments keep it alive."""

    media_type = "text/event-stream"
    keepalive = b": keep-alive\n\n"

    def event(self, kind: str, payload: dict[str, Any], request_id: str, seq: int | None) -> bytes:
        return sse_event(kind, payload, None if seq is None else f"{request_id}:{seq}")


NDJSON_STATUS = {"start": "started", "complete": "completed"}  # the other kinds keep their name
NDJSON_EXTRA: dict[str, dict[str, Any]] = {"start": {"streaming": True}, "complete": {"final": True}, "error": {"final": True}}


class NdjsonFraming:
    """`application/x-ndjson`: one object per line with a `status` and a `seq`; empty lines keep it alive."""

    media_type = "application/x-ndjson"
    keepalive = b"\n"

    def event(self, kind: str, payload: dict[str, Any], request_id: str, seq: int | None) -> bytes:
        head = {"status": NDJSON_STATUS.get(kind, kind)} | ({} if seq is None else {"seq": seq})
        return ndjson_line(head | payload | NDJSON_EXTRA.get(kind, {}))
