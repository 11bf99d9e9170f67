"""The stream's events as typed objects, read from Server-Sent Events or NDJSON lines (docs/protocol.md)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any


class ProtocolError(Exception):
    """The server sent something that does not follow docs/protocol.md."""


@dataclass(frozen=True)
class Queued:
    """`queued`: every generator is busy; the request waits with `ahead` requests before it (as far as the
    ingress that took it knows), until `start`."""

    request_id: str
    ahead: int | None


@dataclass(frozen=True)
class Started:
    """`start` / `started`: the request was admitted; the plan of the video."""

    request_id: str
    total_segments: int
    fps: int
    width: int
    height: int
    num_frames: int
    duration_s: float
    num_steps: int | None
    seed: int | None
    backend: str | None


@dataclass(frozen=True)
class Progress:
    """`progress`: one denoising step of one segment is done."""

    segment_index: int
    step: int
    num_steps: int


@dataclass(frozen=True)
class Segment:
    """`segment`: one standalone MP4 holding output frames [start_frame, start_frame + num_frames)."""

    index: int
    total_segments: int
    mp4: bytes
    is_final: bool
    start_frame: int
    num_frames: int
    fps: int


@dataclass(frozen=True)
class Completed:
    """`complete` / `completed`: every segment was sent."""

    total_segments: int
    num_frames: int
    duration_s: float
    elapsed_s: float


@dataclass(frozen=True)
class Failed:
    """`error`: the stream ends with the server's error."""

    code: str
    message: str
    field: str | None = None


Event = Queued | Started | Progress | Segment | Completed | Failed


@dataclass(frozen=True)
class SseMessage:
    """One dispatched Server-Sent Event: its type, its data lines joined by newlines, and its `id` if any."""

    event: str
    data: str
    id: str | None = None


@dataclass
class Cursor:
    """Where a stream is: its request id and the `seq` of the last event read, to resume after it."""

    request_id: str | None = None
    seq: int = -1

    def advance(self, request_id: str | None, seq: Any) -> None:
        if request_id:
            self.request_id = request_id
        if isinstance(seq, int) and not isinstance(seq, bool):
            self.seq = max(self.seq, seq)


def parse_sse(lines: Iterable[str]) -> Iterator[SseMessage]:
    """SSE messages from the stream's lines (without line endings), as the HTML standard reads them.

    Comments (`: keep-alive`) are skipped, several `data:` lines join with newlines, a blank line dispatches,
    and an event without data or cut off before its blank line is dropped.
    """
    event, data, event_id = "", [], None
    for line in lines:
        if not line:
            if data:
                yield SseMessage(event or "message", "\n".join(data), event_id)
            event, data, event_id = "", [], None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = value
        # `retry` and unknown fields are ignored, as the standard says


def read_sse(lines: Iterable[str], cursor: Cursor | None = None) -> Iterator[Event]:
    """Typed events from an SSE stream; events of unknown types are skipped. `cursor` follows the events'
    ids (`<request_id>:<seq>`), advanced before each event is yielded."""
    for message in parse_sse(lines):
        if message.event in SSE_EVENTS:
            event = SSE_EVENTS[message.event](_json_object(message.data, f"the '{message.event}' event"))
            if cursor is not None and message.id:
                request_id, _, seq = message.id.rpartition(":")
                cursor.advance(request_id, int(seq) if seq.isdigit() else None)
            yield event


def read_ndjson(lines: Iterable[str], cursor: Cursor | None = None) -> Iterator[Event]:
    """Typed events from NDJSON lines; blank lines (keep-alives) and unknown statuses are skipped. `cursor`
    follows the lines' `seq` and `request_id`."""
    for line in lines:
        if not line.strip():
            continue
        obj = _json_object(line, "an NDJSON line")
        status = obj.get("status")
        if status in NDJSON_EVENTS:
            event = NDJSON_EVENTS[status](obj)
            if cursor is not None:
                cursor.advance(obj.get("request_id") if isinstance(obj.get("request_id"), str) else None, obj.get("seq"))
            yield event


# -- payloads to events ------------------------------------------------------------------------------------


def _queued(data: dict[str, Any]) -> Queued:
    ahead = data.get("ahead")
    return Queued(request_id=str(data.get("request_id", "")), ahead=ahead if isinstance(ahead, int) and not isinstance(ahead, bool) else None)


def _started(data: dict[str, Any]) -> Started:
    return Started(
        request_id=str(data.get("request_id", "")),
        total_segments=_field(data, "total_segments", int, "start"),
        fps=_field(data, "fps", int, "start"),
        width=_field(data, "width", int, "start"),
        height=_field(data, "height", int, "start"),
        num_frames=_field(data, "num_frames", int, "start"),
        duration_s=_field(data, "duration_s", float, "start"),
        num_steps=data.get("num_steps"),
        seed=data.get("seed"),
        backend=data.get("backend"),
    )


def _progress(data: dict[str, Any]) -> Progress:
    return Progress(
        segment_index=_field(data, "segment_index", int, "progress"),
        step=_field(data, "step", int, "progress"),
        num_steps=_field(data, "num_steps", int, "progress"),
    )


def _segment(data: dict[str, Any]) -> Segment:
    try:
        mp4 = base64.b64decode(_field(data, "segment_base64", str, "segment"), validate=True)
    except binascii.Error as exc:
        raise ProtocolError(f"the segment event's segment_base64 is not valid base64 ({exc})") from None
    return Segment(
        index=_field(data, "segment_index", int, "segment"),
        total_segments=_field(data, "total_segments", int, "segment"),
        mp4=mp4,
        is_final=bool(data.get("is_final", False)),
        start_frame=_field(data, "start_frame", int, "segment"),
        num_frames=_field(data, "num_frames", int, "segment"),
        fps=_field(data, "fps", int, "segment"),
    )


def _completed(data: dict[str, Any]) -> Completed:
    return Completed(
        total_segments=_field(data, "total_segments", int, "complete"),
        num_frames=_field(data, "num_frames", int, "complete"),
        duration_s=_field(data, "duration_s", float, "complete"),
        elapsed_s=_field(data, "elapsed_s", float, "complete"),
    )


def failed_from(body: Any) -> Failed:
    """The error of an error event, NDJSON error line or JSON error body: `{"error": {code, message, field}}`."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return Failed("unknown_error", f"the server reported an error without details: {str(body)[:200]}")
    return Failed(str(error.get("code") or "unknown_error"), str(error.get("message") or "no message"), error.get("field"))


SSE_EVENTS = {"queued": _queued, "start": _started, "progress": _progress, "segment": _segment, "complete": _completed, "error": failed_from}
NDJSON_EVENTS = {"queued": _queued, "started": _started, "progress": _progress, "segment": _segment, "completed": _completed, "error": failed_from}


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"{what} is not JSON ({exc}): {text[:80]!r}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} is a JSON {type(obj).__name__}, not an object")
    return obj


def _field(data: dict[str, Any], name: str, kind: type, event: str) -> Any:
    """data[name] as `kind`, or a ProtocolError naming the event and the field."""
    value = data.get(name)
    if value is None or isinstance(value, bool) or not isinstance(value, (kind, int) if kind is float else kind):
        raise ProtocolError(f"the {event} event's '{name}' should be a {kind.__name__}, got {value!r}")
    return kind(value)
