"""The streaming client's bookkeeping: segments saved in order as they come, and streams that go wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.errors import ClientError
from client.events import Completed, Failed, Progress, ProtocolError, Queued, Segment, Started
from client.stream import receive

STARTED = Started("r1", 2, 25, 720, 400, 159, 6.36, 4, 7, "preview")
COMPLETED = Completed(2, 159, 6.36, 1.5)


def segment(index: int, start_frame: int = 0, num_frames: int = 1) -> Segment:
    return Segment(index, 2, f"mp4 {index}".encode(), index == 1, start_frame, num_frames, 25)


def test_each_segment_is_on_disk_when_its_event_is_handed_on(tmp_path: Path):
    seen: list[tuple[str, list[str]]] = []

    def on_event(event, saved):
        seen.append((type(event).__name__, sorted(p.name for p in tmp_path.iterdir())))
        if saved is not None:
            assert saved.read_bytes() == event.mp4, f"expected {saved} to hold segment {event.index}'s bytes"

    events = [Queued("r1", 1), Queued("r1", 0), STARTED, Progress(0, 1, 4), segment(0, 0, 105), Progress(1, 1, 4), segment(1, 105, 54), COMPLETED]
    received = receive(events, tmp_path, on_event)
    expected = [
        ("Queued", []),
        ("Queued", []),
        ("Started", []),
        ("Progress", []),
        ("Segment", ["segment_000.mp4"]),
        ("Progress", ["segment_000.mp4"]),
        ("Segment", ["segment_000.mp4", "segment_001.mp4"]),
    ]
    assert seen == expected, f"expected files to appear one event at a time, {expected}, found {seen}"
    files = [p.name for p in received.files]
    assert files == ["segment_000.mp4", "segment_001.mp4"], f"expected both segments in order, found {files}"
    assert received.completed == COMPLETED, f"expected {COMPLETED}, found {received.completed}"


def test_an_error_event_raises_the_servers_message_and_keeps_saved_segments(tmp_path: Path):
    failure = Failed("generation_failed", "generation failed (RuntimeError: boom)")
    with pytest.raises(ClientError) as caught:
        receive([STARTED, segment(0), failure], tmp_path)
    assert failure.message in caught.value.message, f"expected {failure.message!r} in {caught.value.message!r}"
    found = [p.name for p in tmp_path.iterdir()]
    assert found == ["segment_000.mp4"], f"expected the segment before the error kept, found {found}"


def test_a_stream_that_ends_early_is_an_error(tmp_path: Path):
    with pytest.raises(ClientError) as caught:
        receive([STARTED, segment(0)], tmp_path)
    assert "1 of 2 segments" in caught.value.message, f"expected '1 of 2 segments' in {caught.value.message!r}"


@pytest.mark.parametrize(
    ("events", "says"),
    [
        ([segment(0)], "expected a start event first"),
        ([STARTED, segment(1)], "expected segment 0, got segment 1"),
        ([STARTED, segment(0), COMPLETED], "complete after 1 of 2 segments"),
        ([STARTED, Queued("r1", 0), segment(0)], "a queued event after the start event"),
    ],
)
def test_events_out_of_order_are_a_protocol_error(tmp_path: Path, events, says):
    with pytest.raises(ProtocolError) as caught:
        receive(events, tmp_path)
    assert says in str(caught.value), f"expected {says!r} in {str(caught.value)!r}"
