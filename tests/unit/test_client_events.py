"""The clients' stream readers: SSE framing as the HTML standard defines it, NDJSON lines, typed events."""

from __future__ import annotations

import base64
import json

import pytest

from client.events import (
    Completed,
    Failed,
    Progress,
    ProtocolError,
    Queued,
    Segment,
    SseMessage,
    Started,
    failed_from,
    parse_sse,
    read_ndjson,
    read_sse,
)

START = {
    "message": "Video generation started",
    "request_id": "r1",
    "total_segments": 2,
    "fps": 25,
    "width": 720,
    "height": 400,
    "num_frames": 159,
    "duration_s": 6.36,
    "lead_in_s": 0.3,
    "num_steps": 4,
    "seed": 7,
    "backend": "preview",
}
SEGMENT = {
    "segment_index": 0,
    "total_segments": 2,
    "segment_base64": base64.b64encode(b"\x00mp4").decode(),
    "is_final": False,
    "start_frame": 0,
    "num_frames": 105,
    "fps": 25,
    "mime_type": "video/mp4",
    "codecs": "avc1.64001f,mp4a.40.2",
}
COMPLETE = {"message": "Video generation completed", "total_segments": 2, "num_frames": 159, "duration_s": 6.36, "elapsed_s": 1.5}
ERROR = {"error": {"code": "generation_failed", "message": "generation failed (RuntimeError: boom)", "field": None}}


def sse(name: str, data: dict) -> list[str]:
    return [f"event: {name}", f"data: {json.dumps(data)}", ""]


# -- SSE framing -------------------------------------------------------------------------------------------


def test_sse_joins_multiline_data_and_skips_comments():
    lines = [
        ": keep-alive",
        "",
        "event: note",
        "data: first",
        ": a comment inside an event",
        "data: second",
        "",
        ": keep-alive",
        "",
    ]
    found = list(parse_sse(lines))
    expected = [SseMessage("note", "first\nsecond")]
    assert found == expected, f"expected {expected}, found {found}"


def test_sse_removes_one_space_after_the_colon_only():
    found = list(parse_sse(["data:no space", "data:  two spaces", "data", ""]))
    expected = [SseMessage("message", "no space\n two spaces\n")]
    assert found == expected, f"expected {expected}, found {found}"


def test_sse_drops_events_without_data_and_a_cut_off_last_event():
    found = list(parse_sse(["event: start", "", "id: 3", "retry: 10", "", "event: segment", "data: {}"]))
    assert found == [], f"expected no message (no data, then no blank line to dispatch), found {found}"


def test_sse_resets_the_event_type_after_each_dispatch():
    found = [m.event for m in parse_sse(["event: start", "data: 1", "", "data: 2", ""])]
    assert found == ["start", "message"], f"expected ['start', 'message'], found {found}"


# -- typed events ------------------------------------------------------------------------------------------


def test_sse_stream_becomes_typed_events():
    progress = {"segment_index": 0, "step": 2, "num_steps": 4}
    lines = [
        *sse("queued", {"message": "Waiting for a free generator", "request_id": "r1", "ahead": 2, "ahead_scope": "ingress"}),
        ": keep-alive",
        "",
        *sse("start", START),
        ": keep-alive",
        "",
        *sse("progress", progress),
        *sse("segment", SEGMENT),
        *sse("complete", COMPLETE),
    ]
    found = list(read_sse(lines))
    expected = [
        Queued("r1", 2),
        Started("r1", 2, 25, 720, 400, 159, 6.36, 4, 7, "preview"),
        Progress(0, 2, 4),
        Segment(index=0, total_segments=2, mp4=b"\x00mp4", is_final=False, start_frame=0, num_frames=105, fps=25),
        Completed(2, 159, 6.36, 1.5),
    ]
    assert found == expected, f"expected {expected}, found {found}"


def test_sse_error_event_and_unknown_events():
    found = list(read_sse([*sse("heartbeat", {"t": 1}), *sse("error", ERROR)]))
    expected = [Failed("generation_failed", "generation failed (RuntimeError: boom)", None)]
    assert found == expected, f"expected the unknown event skipped and {expected}, found {found}"


def test_ndjson_skips_blank_lines_and_maps_statuses():
    lines = [
        json.dumps({"status": "queued", "request_id": "r1", "ahead": "unknown"}),
        json.dumps({"status": "started", "streaming": True, **START}),
        "",
        "   ",
        json.dumps({"status": "segment", **SEGMENT}),
        json.dumps({"status": "something_new"}),
        json.dumps({"status": "error", **ERROR, "final": True}),
    ]
    found = [type(event).__name__ for event in read_ndjson(lines)]
    assert found == ["Queued", "Started", "Segment", "Failed"], f"expected ['Queued', 'Started', 'Segment', 'Failed'], found {found}"


@pytest.mark.parametrize(
    ("lines", "says"),
    [
        (["event: start", "data: {not json", ""], "not JSON"),
        (["event: start", "data: [1, 2]", ""], "JSON list"),
        (sse("segment", {**SEGMENT, "num_frames": None}), "'num_frames'"),
        (sse("segment", {**SEGMENT, "num_frames": "105"}), "'num_frames'"),
        (sse("segment", {**SEGMENT, "segment_base64": "abc"}), "not valid base64"),
        (sse("start", {k: v for k, v in START.items() if k != "fps"}), "'fps'"),
    ],
)
def test_malformed_events_raise_a_protocol_error_that_says_what(lines, says):
    with pytest.raises(ProtocolError) as caught:
        list(read_sse(lines))
    assert says in str(caught.value), f"expected the error to mention {says!r}, found {str(caught.value)!r}"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"success": False, "error": {"code": "overloaded", "message": "busy", "field": None}}, Failed("overloaded", "busy")),
        ({"error": {"code": "invalid_field", "message": "bad", "field": "seed"}}, Failed("invalid_field", "bad", "seed")),
        ({"error": {}}, Failed("unknown_error", "no message")),
    ],
)
def test_error_bodies(body, expected):
    found = failed_from(body)
    assert found == expected, f"expected {expected}, found {found}"


def test_error_body_without_error_object_keeps_the_body_in_the_message():
    found = failed_from({"detail": "Not Found"})
    assert found.code == "unknown_error" and "Not Found" in found.message, f"expected the body in the message, found {found}"
