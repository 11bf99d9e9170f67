"""The command-line clients as a user runs them, against the real service started with `serve run`.

One paced preview service for the module (SECONDS_PER_STEP a denoising step, so that segments arrive one
by one), the example image and speech (about 6 s: 2 segments at 720x400). Failures the real service
cannot be made to produce on demand (a stream cut off, an error event after the start, a stall, a 503)
come from a small scripted HTTP server instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import httpx
import pytest

from tests.e2e.server import free_port, serve_run
from tests.helpers import EXAMPLE_IMAGE, EXAMPLE_SPEECH, b64

ROOT = Path(__file__).resolve().parents[2]
SECONDS_PER_STEP = 0.1
SEED = 7
PROMPT = "a man talking on a sofa"
INPUTS = ["--prompt", PROMPT, "--image", str(EXAMPLE_IMAGE), "--audio", str(EXAMPLE_SPEECH), "--seed", str(SEED)]
STREAM = [sys.executable, "-m", "client.streaming_client"]
GENERATE = [sys.executable, "-m", "client.client"]


def run(command: list[str], *args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def explain(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


# -- media helpers -----------------------------------------------------------------------------------------


def frame_hashes(path: Path) -> list[str]:
    """A digest of every decoded video frame, in order."""
    with av.open(str(path)) as container:
        return [hashlib.sha1(frame.to_ndarray(format="rgb24").tobytes()).hexdigest() for frame in container.decode(video=0)]


@dataclass(frozen=True)
class Packets:
    """One stream's packets: start and end times in seconds and the payloads."""

    starts: list[Fraction]
    ends: list[Fraction]
    payloads: list[bytes]
    time_base: Fraction


def packets(path: Path, kind: str) -> Packets:
    """Everything is read while the file is open: PyAV's streams and packets are not valid after close."""
    with av.open(str(path)) as container:
        stream = getattr(container.streams, kind)[0]
        found = [p for p in container.demux(stream) if p.dts is not None]
        return Packets(
            starts=[p.pts * p.time_base for p in found],
            ends=[(p.pts + p.duration) * p.time_base for p in found],
            payloads=[bytes(p) for p in found],
            time_base=Fraction(stream.time_base),
        )


def difference(found: list, expected: list) -> str:
    """'N items, first difference at index I' for an assert message."""
    first = next((i for i, (a, b) in enumerate(zip(found, expected, strict=False)) if a != b), min(len(found), len(expected)))
    return f"{len(found)} items, the first difference at index {first}"


def stream_types(path: Path) -> list[str]:
    with av.open(str(path)) as container:
        return sorted(stream.type for stream in container.streams)


# -- the service -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_run(tmp_path_factory.mktemp("serve"), args={"options": {"seconds_per_step": SECONDS_PER_STEP}}) as url:
        yield url


def example_body(**fields: Any) -> dict[str, Any]:
    return {
        "prompt": PROMPT,
        "image_base64": b64(EXAMPLE_IMAGE.read_bytes()),
        "audio_base64": b64(EXAMPLE_SPEECH.read_bytes()),
        "seed": SEED,
        **fields,
    }


@pytest.fixture(scope="module")
def plan(server: str) -> dict[str, Any]:
    """The ground truth, read straight off the SSE stream: the start event and the segment events."""
    events = []
    with httpx.stream("POST", f"{server}/generate-stream", json=example_body(), timeout=60) as response:
        assert response.status_code == 200, f"expected 200 from /generate-stream, found {response.status_code}"
        events = [json.loads(line.removeprefix("data:")) for line in response.iter_lines() if line.startswith("data:")]
    segments = [event for event in events if "segment_base64" in event]
    assert len(segments) >= 2, f"expected the example to give at least 2 segments, found {len(segments)}"
    start = next(event for event in events if event.get("message") == "Video generation started")  # after any `queued`
    return {"start": start, "segments": segments}


@dataclass(frozen=True)
class StreamRun:
    output_dir: Path
    result: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def streamed(server: str, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], StreamRun]:
    """avatar-stream with --concatenate on the example inputs, once per mode."""
    runs: dict[str, StreamRun] = {}

    def stream(mode: str) -> StreamRun:
        if mode not in runs:
            work = tmp_path_factory.mktemp(f"stream-{mode}")
            result = run(STREAM, "--server", server, *INPUTS, "--mode", mode, "--output-dir", "out", "--concatenate", cwd=work)
            assert result.returncode == 0, f"expected avatar-stream --mode {mode} to succeed, found {explain(result)}"
            runs[mode] = StreamRun(work / "out", result)
        return runs[mode]

    return stream


# -- streaming: every segment saved, joined losslessly -------------------------------------------------------


@pytest.mark.parametrize("mode", ["sse", "chunked"])
def test_stream_saves_every_segment(streamed, plan, mode):
    run_ = streamed(mode)
    expected_files = [f"segment_{i:03d}.mp4" for i in range(len(plan["segments"]))]
    found_files = sorted(p.name for p in run_.output_dir.glob("segment_*.mp4"))
    assert found_files == expected_files, f"expected {expected_files}, found {found_files}"
    total = 0
    for name, event in zip(expected_files, plan["segments"], strict=True):
        path = run_.output_dir / name
        types = stream_types(path)
        assert types == ["audio", "video"], f"{name}: expected an audio and a video stream, found {types}"
        frames = len(frame_hashes(path))
        assert frames == event["num_frames"], f"{name}: expected {event['num_frames']} frames as its event says, found {frames}"
        assert f"saved out/{name}" in run_.result.stdout, f"expected 'saved out/{name}' on stdout, found {run_.result.stdout!r}"
        total += frames
    assert total == plan["start"]["num_frames"], (
        f"expected the segments to add up to {plan['start']['num_frames']} frames, found {total}"
    )
    summary = f"done: {len(expected_files)} segments, {total} frames"
    assert summary in run_.result.stdout, f"expected {summary!r} on stdout, found {run_.result.stdout!r}"
    assert not list(run_.output_dir.glob(".*.part")), "expected no temporary files left behind"


def test_concatenate_keeps_every_frame_and_packet(streamed):
    out = streamed("sse").output_dir
    segments = sorted(out.glob("segment_*.mp4"))
    video = out / "video.mp4"
    expected_frames = [digest for segment in segments for digest in frame_hashes(segment)]
    found_frames = frame_hashes(video)
    assert found_frames == expected_frames, (
        f"expected the {len(expected_frames)} segment frames in order, found {difference(found_frames, expected_frames)}"
    )
    for kind in ("video", "audio"):
        expected = [payload for segment in segments for payload in packets(segment, kind).payloads]
        found = packets(video, kind).payloads
        assert found == expected, (
            f"expected the segments' {len(expected)} {kind} packets copied as they are, found {difference(found, expected)}"
        )
    audio, video_end = packets(video, "audio"), packets(video, "video").ends[-1]
    gaps = [(float(end), float(start)) for end, start in zip(audio.ends[:-1], audio.starts[1:], strict=True) if end != start]
    assert not gaps, f"expected gapless audio (each packet starting where the last ended), found gaps at {gaps[:5]}"
    aac_frame = 1024 * audio.time_base  # samples per AAC frame / sample rate
    assert audio.starts[0] <= aac_frame, f"expected the audio to start within one AAC frame, found {float(audio.starts[0])} s"
    assert abs(audio.ends[-1] - video_end) <= aac_frame, (
        f"expected the audio to cover the video's {float(video_end)} s, found it ends at {float(audio.ends[-1])} s"
    )


def test_generate_gives_the_frames_of_the_stream(server, streamed, tmp_path):
    avatar_generate = str(Path(sys.executable).with_name("avatar-generate"))  # the installed console script
    result = run([avatar_generate], "--server", server, *INPUTS, "--output", "whole.mp4", cwd=tmp_path)
    assert result.returncode == 0, f"expected avatar-generate to succeed, found {explain(result)}"
    assert "saved whole.mp4" in result.stdout, f"expected 'saved whole.mp4' on stdout, found {result.stdout!r}"
    streamed_frames = frame_hashes(streamed("sse").output_dir / "video.mp4")
    found = frame_hashes(tmp_path / "whole.mp4")
    expected = f"the {len(streamed_frames)} frames of the streamed video (seed {SEED})"
    assert found == streamed_frames, f"expected {expected}, found {difference(found, streamed_frames)}"
    types = stream_types(tmp_path / "whole.mp4")
    assert types == ["audio", "video"], f"expected an audio and a video stream, found {types}"


def test_segments_appear_while_the_stream_runs(server, tmp_path):
    """With 20 steps a segment (2 s each), segment_000.mp4 is on disk, whole, long before the stream ends."""
    process = subprocess.Popen(
        [*STREAM, "--server", server, *INPUTS, "--steps", "20", "--output-dir", "out"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first, second = tmp_path / "out" / "segment_000.mp4", tmp_path / "out" / "segment_001.mp4"
    try:
        deadline = time.monotonic() + 60
        while not first.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        running, second_there = process.poll() is None, second.exists()
        assert first.exists(), f"expected {first.name} to appear within 60 s, found {sorted(p.name for p in tmp_path.rglob('*'))}"
        assert running, f"expected the client still running when {first.name} appeared, found it exited {process.returncode}"
        assert not second_there, f"expected {second.name} not yet there when {first.name} appeared, found it"
        types = stream_types(first)
        assert types == ["audio", "video"], f"expected {first.name} whole when it appears (audio, video), found {types}"
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, f"expected success, found exit {process.returncode}: {stdout}{stderr}"
    assert second.exists(), f"expected {second.name} at the end, found {sorted(p.name for p in first.parent.iterdir())}"


# -- errors: one clear line on stderr, a non-zero exit, no traceback ---------------------------------------------

NOT_AN_IMAGE = b"this is a text file, not an image\n"
SERVER_ERRORS = {
    "steps-0": (["--steps", "0"], {"prompt": PROMPT, "num_steps": 0}),
    "text-as-image": (["--image", "notes.txt"], {"prompt": PROMPT, "image_base64": b64(NOT_AN_IMAGE)}),
}
CLIENTS = {"sse": [*STREAM, "--mode", "sse"], "chunked": [*STREAM, "--mode", "chunked"], "generate": GENERATE}


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, says: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, f"expected exit {code}, found {explain(result)}"
    assert "Traceback" not in result.stderr, f"expected no traceback, found {result.stderr}"
    assert len(lines) == 1, f"expected one line on stderr, found {len(lines)}: {result.stderr!r}"
    assert says in lines[0], f"expected {says!r} on stderr, found {lines[0]!r}"


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("case", SERVER_ERRORS)
def test_server_error_reaches_stderr(server, tmp_path, client, case):
    args, body = SERVER_ERRORS[case]
    reply = httpx.post(f"{server}/generate", json=body, timeout=30)
    assert reply.status_code == 422, f"expected the service to refuse {case} with 422, found {reply.status_code}"
    message = reply.json()["error"]["message"]
    (tmp_path / "notes.txt").write_bytes(NOT_AN_IMAGE)
    result = run(CLIENTS[client], "--server", server, "--prompt", PROMPT, *args, cwd=tmp_path)
    assert_one_line_error(result, 1, message)
    assert "HTTP 422" in result.stderr, f"expected the status on stderr, found {result.stderr!r}"


@pytest.mark.parametrize("client", ["sse", "generate"])
def test_missing_input_file_is_a_usage_error(tmp_path, client):
    result = run(CLIENTS[client], "--prompt", PROMPT, "--audio", "missing.wav", cwd=tmp_path)
    assert_one_line_error(result, 2, "input file not found: missing.wav")


@pytest.mark.parametrize(
    "command",
    [
        STREAM,
        [sys.executable, str(ROOT / "client" / "streaming_client.py")],
        [str(Path(sys.executable).with_name("avatar-generate"))],
    ],
    ids=["module", "script", "console-script"],
)
def test_connection_refused(tmp_path, command):
    url = f"http://127.0.0.1:{free_port()}"
    result = run(command, "--server", url, "--prompt", PROMPT, cwd=tmp_path)
    assert_one_line_error(result, 1, f"cannot connect to {url}")


# -- a scripted server for failures mid-stream -------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """What the scripted server answers: a status, headers, and chunks sent `pause_s` apart."""

    status: int
    content_type: str
    chunks: list[bytes]
    headers: dict[str, str] | None = None
    pause_s: float = 0.0


def sse(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def ndjson(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode() + b"\n"


START = {
    "request_id": "scripted",
    "total_segments": 2,
    "fps": 25,
    "width": 720,
    "height": 400,
    "num_frames": 81,
    "duration_s": 3.24,
    "num_steps": 4,
}
SEGMENT = {
    "segment_index": 0,
    "total_segments": 2,
    "segment_base64": b64(b"not really an mp4"),
    "is_final": False,
    "start_frame": 0,
    "num_frames": 57,
    "fps": 25,
}
FAILURE = {
    "code": "generation_failed",
    "message": "generation failed (RuntimeError: out of memory); request scripted",
    "field": None,
}


@contextlib.contextmanager
def scripted_server(reply: Reply) -> Iterator[str]:
    """An HTTP server on a free port that answers every POST with `reply`, then closes the connection."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client that timed out
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                for name, value in (reply.headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                for chunk in reply.chunks:
                    time.sleep(reply.pause_s)
                    self.wfile.write(chunk)
                    self.wfile.flush()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


SCRIPTED = {
    "sse-cut-off": (
        ["--mode", "sse"],
        Reply(200, "text/event-stream", [sse("start", START), sse("segment", SEGMENT)]),
        "the stream ended before it was complete (1 of 2 segments received)",
    ),
    "sse-error-event": (
        ["--mode", "sse"],
        Reply(200, "text/event-stream", [sse("start", START), b": keep-alive\n\n", sse("error", {"error": FAILURE})]),
        FAILURE["message"],
    ),
    "ndjson-error-line": (
        ["--mode", "chunked"],
        Reply(
            200,
            "application/x-ndjson",
            [ndjson({"status": "started", **START}), b"\n", ndjson({"status": "error", "error": FAILURE, "final": True})],
        ),
        FAILURE["message"],
    ),
    "stall": (
        ["--timeout", "1"],
        Reply(200, "text/event-stream", [sse("start", START), sse("segment", SEGMENT)], pause_s=3),
        "timed out waiting for",
    ),
    "overloaded": (
        [],
        Reply(
            503,
            "application/json",
            [
                json.dumps(
                    {"success": False, "error": {"code": "overloaded", "message": "all generators are busy", "field": None}}
                ).encode()
            ],
            {"Retry-After": "5"},
        ),
        "the server could not serve the request (HTTP 503, overloaded): all generators are busy (retry after 5 s)",
    ),
    "not-json": ([], Reply(502, "text/html", [b"<html>Bad Gateway</html>"]), "HTTP 502"),
}


@pytest.mark.parametrize("case", SCRIPTED)
def test_stream_failures_reach_stderr(tmp_path, case):
    args, reply, says = SCRIPTED[case]
    with scripted_server(reply) as url:
        result = run(STREAM, "--server", url, "--prompt", PROMPT, "--output-dir", "out", *args, cwd=tmp_path, timeout=60)
    assert_one_line_error(result, 1, says)


@pytest.mark.parametrize("mode", ["sse", "chunked"])
def test_a_queued_request_says_so(tmp_path, mode):
    queued = [{"request_id": "scripted", "ahead": 1}, {"request_id": "scripted", "ahead": 0}]
    timeout = {"code": "queue_timeout", "message": "no generator was free within 600 s; retry later", "field": None}
    if mode == "sse":
        chunks = [sse("queued", queued[0]), b": keep-alive\n\n", sse("queued", queued[1]), sse("error", {"error": timeout})]
        reply = Reply(200, "text/event-stream", chunks)
    else:
        chunks = [ndjson({"status": "queued", **queued[0]}), b"\n", ndjson({"status": "queued", **queued[1]}),
                  ndjson({"status": "error", "error": timeout, "final": True})]
        reply = Reply(200, "application/x-ndjson", chunks)
    with scripted_server(reply) as url:
        result = run(STREAM, "--server", url, "--prompt", PROMPT, "--output-dir", "out", "--mode", mode, cwd=tmp_path, timeout=60)
    assert_one_line_error(result, 1, f"the stream ended with an error (queue_timeout): {timeout['message']}")
    expected = ["queued request scripted: waiting for a free generator, 1 ahead", "queued request scripted: waiting for a free generator, 0 ahead"]
    assert result.stdout.splitlines() == expected, f"expected {expected} on stdout, found {result.stdout!r}"


# -- jobs and resume ---------------------------------------------------------------------------------------


def test_detach_then_resume_gives_the_frames_of_the_stream(server, streamed, tmp_path):
    detached = run(STREAM, "--server", server, *INPUTS, "--detach", cwd=tmp_path)
    assert detached.returncode == 0, f"expected --detach to succeed, found {explain(detached)}"
    request_id = detached.stdout.strip()
    assert request_id and "\n" not in request_id, f"expected the request id alone on stdout, found {detached.stdout!r}"
    resumed = run(STREAM, "--server", server, "--resume", request_id, "--output-dir", "out", "--concatenate", cwd=tmp_path)
    assert resumed.returncode == 0, f"expected --resume {request_id} to succeed, found {explain(resumed)}"
    expected = frame_hashes(streamed("sse").output_dir / "video.mp4")
    found = frame_hashes(tmp_path / "out" / "video.mp4")
    assert found == expected, f"the resumed job's frames differ from the stream's: {difference(found, expected)}"


def test_resume_of_an_unknown_id_is_a_clear_error(server, tmp_path):
    result = run(STREAM, "--server", server, "--resume", "no-such-request", "--output-dir", "out", cwd=tmp_path)
    assert_one_line_error(result, 1, "(HTTP 404, unknown_request)")
