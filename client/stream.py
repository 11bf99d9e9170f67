"""One streamed generation: open /generate-stream (SSE) or /generate-stream-chunked (NDJSON), check the
events' order, and save each segment as `segment_NNN.mp4` the moment it arrives."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from client.errors import ClientError, raise_for_error_response, server_error
from client.events import Completed, Cursor, Event, Failed, ProtocolError, Queued, Segment, Started, read_ndjson, read_sse
from client.files import write_atomically
from client.request import endpoint, new_request_id

ROUTES = {"sse": ("/generate-stream", read_sse), "chunked": ("/generate-stream-chunked", read_ndjson)}


def stream_events(client: httpx.Client, server: str, body: dict[str, Any], mode: str, cursor: Cursor | None = None) -> Iterator[Event]:
    """The events of one streamed request, read as they arrive. The request is sent on the first `next()`;
    `cursor` follows the request id and the last event's seq, to resume after a drop.

    Raises:
        ClientError: the server refused the request before streaming (HTTP 4xx/5xx, with its message).
        httpx.HTTPError: the connection failed, timed out or broke off.
    """
    path, reader = ROUTES[mode]
    with client.stream("POST", endpoint(server, path), json=body, headers={"X-Request-ID": new_request_id()}) as response:
        if not response.is_success:
            response.read()
            raise_for_error_response(response)
        if cursor is not None:  # known before the first event: a Ctrl-C can cancel a request still queued
            cursor.advance(response.headers.get("x-request-id"), None)
        yield from reader(response.iter_lines(), cursor)


def segment_path(output_dir: Path, index: int) -> Path:
    return output_dir / f"segment_{index:03d}.mp4"


@dataclass(frozen=True)
class Received:
    """What a finished stream delivered, and when (seconds since the request was sent)."""

    started: Started
    completed: Completed
    files: list[Path]  # segment_000.mp4, ... in order
    first_segment_s: float
    total_s: float


def receive(events: Iterable[Event], output_dir: Path, on_event: Callable[[Event, Path | None], None] | None = None) -> Received:
    """Consume a stream: save each segment atomically into `output_dir` as it arrives, return the summary.

    `on_event(event, saved_path)` is called after each event (saved_path is set for segments), e.g. to
    move a progress bar. Timing starts when iteration starts, i.e. when a lazy `stream_events` sends.

    Raises:
        ClientError: the stream ended with an error event, or before `complete`.
        ProtocolError: events out of the order of docs/protocol.md.
    """
    sent = time.monotonic()
    started: Started | None = None
    files: list[Path] = []
    first_segment_s = 0.0
    for event in events:
        saved = None
        if isinstance(event, Failed):
            raise server_error(event)
        if isinstance(event, Queued):
            if started is not None:
                raise ProtocolError("a queued event after the start event")
        elif isinstance(event, Started):
            started = event
        elif started is None:
            raise ProtocolError(f"expected a start event first, got {type(event).__name__}")
        elif isinstance(event, Segment):
            if event.index != len(files):
                raise ProtocolError(f"expected segment {len(files)}, got segment {event.index}")
            saved = segment_path(output_dir, event.index)
            write_atomically(saved, event.mp4)
            files.append(saved)
            first_segment_s = first_segment_s or time.monotonic() - sent
        elif isinstance(event, Completed):
            if len(files) != started.total_segments:
                raise ProtocolError(f"complete after {len(files)} of {started.total_segments} segments")
            return Received(started, event, files, first_segment_s, time.monotonic() - sent)
        if on_event is not None:
            on_event(event, saved)
    got = f"{len(files)} of {started.total_segments} segments" if started else "no start event"
    raise ClientError(f"the stream ended before it was complete ({got} received)")
