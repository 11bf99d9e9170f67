"""Every endpoint over real HTTP through Ray Serve: streams parsed event by event, every segment a playable
MP4, frame counts that add up, and the same frames streamed or not for the same seed."""

from __future__ import annotations

import base64
import math

import httpx
import numpy as np
import pytest

from tests.helpers import audio_file, b64, speech_like
from tests.integration.conftest import PACED_STEP_S, Service
from tests.integration.streams import decode_frames, segment_bytes, sse_events, stream_both_ways, stream_types

SPEECH_S = 5.0
REQUEST = {"prompt": "a person talking", "audio_base64": b64(audio_file(speech_like(SPEECH_S), 16000)), "seed": 7, "num_steps": 2}
# docs/protocol.md: ceil((lead_in_s + audio_s) * 25) + 1 frames
EXPECTED_FRAMES = math.ceil((0.3 + SPEECH_S) * 25) + 1


def test_health(service: Service, client: httpx.Client) -> None:
    response = client.get(f"{service.url}/health")
    body = response.json()
    assert response.status_code == 200, body
    assert (body["status"], body["model_loaded"], body["streaming_supported"], body["backend"]) == ("healthy", True, True, "preview")


@pytest.fixture(scope="module")
def streamed(service: Service) -> dict[str, list]:
    return stream_both_ways(service.url, REQUEST)


@pytest.mark.parametrize(("route", "names"), [("generate-stream", ("start", "progress", "segment", "complete")),
                                              ("generate-stream-chunked", ("started", "progress", "segment", "completed"))])
def test_stream_events_in_order(streamed: dict, route: str, names: tuple[str, ...]) -> None:
    events = streamed[route]
    start, progress, segment, end = names
    assert events[0].name == start and events[-1].name == end, [e.name for e in events]
    total = events[0].data["total_segments"]
    assert total == 3 and events[0].data["num_frames"] == EXPECTED_FRAMES, events[0].data
    segments = [e for e in events if e.name == segment]
    assert [e.data["segment_index"] for e in segments] == list(range(total))
    assert [e.data["is_final"] for e in segments] == [False] * (total - 1) + [True]
    steps = [(e.data["segment_index"], e.data["step"]) for e in events if e.name == progress]
    assert steps == [(k, s) for k in range(total) for s in (1, 2)], steps
    for k in range(total):  # a segment's progress comes before the segment
        last_step = max(i for i, e in enumerate(events) if e.name == progress and e.data["segment_index"] == k)
        assert last_step < events.index(segments[k])
    if route == "generate-stream-chunked":
        assert events[0].data["streaming"] is True and events[-1].data["final"] is True


def test_segments_are_playable_and_add_up(streamed: dict) -> None:
    segments = [e for e in streamed["generate-stream"] if e.name == "segment"]
    start_frame = 0
    for event in segments:
        mp4 = segment_bytes(event)
        assert stream_types(mp4) == ["audio", "video"], f"segment {event.data['segment_index']} needs video and audio"
        frames = decode_frames(mp4)
        assert len(frames) == event.data["num_frames"], (len(frames), event.data)
        assert event.data["start_frame"] == start_frame, "segments do not repeat frames"
        assert event.data["mime_type"] == "video/mp4" and event.data["codecs"].startswith("avc1.")
        start_frame += len(frames)
    assert start_frame == EXPECTED_FRAMES


def test_streams_and_whole_video_have_the_same_frames(service: Service, client: httpx.Client, streamed: dict) -> None:
    response = client.post(f"{service.url}/generate", json=REQUEST)
    body = response.json()
    assert response.status_code == 200 and body["success"] is True, body
    whole = decode_frames(base64.b64decode(body["video_base64"]))
    assert (len(whole), body["num_frames"], body["total_segments"]) == (EXPECTED_FRAMES, EXPECTED_FRAMES, 3)
    for route, name in (("generate-stream", "segment"), ("generate-stream-chunked", "segment")):
        joined = np.concatenate([decode_frames(segment_bytes(e)) for e in streamed[route] if e.name == name])
        np.testing.assert_array_equal(joined, whole, err_msg=f"{route}: decoded frames differ from /generate's")


def test_without_audio(service: Service, client: httpx.Client) -> None:
    response = client.post(f"{service.url}/generate", json={"prompt": "hello", "num_frames": 30, "height": 256, "width": 256})
    body = response.json()
    assert response.status_code == 200, body
    video = base64.b64decode(body["video_base64"])
    assert decode_frames(video).shape == (30, 256, 256, 3) and stream_types(video) == ["audio", "video"]


def test_first_segment_arrives_before_the_last_is_computed(paced: Service, client: httpx.Client) -> None:
    """With 4 steps of 0.1 s per segment, the last of 3 segments is computed >= 0.8 s after the first one."""
    with client.stream("POST", f"{paced.url}/generate-stream", json={**REQUEST, "num_steps": 4}) as response:
        events = list(sse_events(response))
    arrivals = [e.received for e in events if e.name == "segment"]
    assert len(arrivals) == 3, [e.name for e in events]
    gap = arrivals[-1] - arrivals[0]
    assert gap >= 2 * 4 * PACED_STEP_S * 0.9, f"segment 0 reached the client only {gap:.2f} s before the last one"
