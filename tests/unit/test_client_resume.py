"""avatar-stream's resume after a dropped connection and its API key, over real HTTP against a scripted
server: the POST stream breaks off after segment 0, and GET /streams/{id} serves what came after `after`."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from client.streaming_client import main
from tests.helpers import b64

REQUEST_ID = "r-1"
START = {"request_id": REQUEST_ID, "total_segments": 2, "fps": 25, "width": 128, "height": 128, "num_frames": 9, "duration_s": 0.36, "num_steps": 1}
COMPLETE = {"message": "Video generation completed", "total_segments": 2, "num_frames": 9, "duration_s": 0.36, "seed": 1, "elapsed_s": 0.5}


def segment(index: int) -> dict[str, Any]:
    return {"segment_index": index, "total_segments": 2, "segment_base64": b64(f"segment {index}".encode()), "is_final": index == 1,
            "start_frame": 5 * index, "num_frames": 5 - index, "fps": 25}


EVENTS = [("start", START), ("segment", segment(0)), ("segment", segment(1)), ("complete", COMPLETE)]  # seq = index
NDJSON_STATUS = {"start": "started", "complete": "completed"}
sent_ids: list[str | None] = []  # the X-Request-ID of each POST


def encode(kind: str, payload: dict[str, Any], seq: int, ndjson: bool) -> bytes:
    if ndjson:
        return json.dumps({"status": NDJSON_STATUS.get(kind, kind), "seq": seq, **payload}).encode() + b"\n"
    return f"id: {REQUEST_ID}:{seq}\nevent: {kind}\ndata: {json.dumps(payload)}\n\n".encode()


@contextlib.contextmanager
def dropping_server(drops: int) -> Iterator[tuple[str, list[tuple[str, str, str | None]]]]:
    """The POST sends start and segment 0, then closes the connection; the first `drops` resumes answer 503
    (an ingress restarting), later ones the events after `after`. Records (method, path, Authorization)."""
    seen: list[tuple[str, str, str | None]] = []
    sent_ids.clear()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # the end of the body is the end of the connection

        def _send(self, ndjson: bool, events: list[tuple[int, str, dict[str, Any]]]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson" if ndjson else "text/event-stream")
            self.end_headers()
            for seq, kind, payload in events:
                self.wfile.write(encode(kind, payload, seq, ndjson))

        def do_POST(self) -> None:
            seen.append(("POST", self.path, self.headers.get("Authorization")))
            sent_ids.append(self.headers.get("X-Request-ID"))
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._send(self.path.endswith("chunked"), [(seq, *event) for seq, event in enumerate(EVENTS[:2])])

        def do_GET(self) -> None:
            seen.append(("GET", self.path, self.headers.get("Authorization")))
            if sum(method == "GET" for method, _, _ in seen) <= drops:
                self.send_error(503)
                return
            url = urlparse(self.path)
            query = parse_qs(url.query)
            after = int(query.get("after", ["-1"])[0])
            self._send(query.get("format") == ["ndjson"], [(seq, *event) for seq, event in enumerate(EVENTS) if seq > after])

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("mode", ["sse", "chunked"])
def test_a_dropped_stream_resumes_after_the_last_event(tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNIAVATAR_API_KEY", "key-from-env")
    monkeypatch.setattr("client.resume.time.sleep", lambda _: None)  # the backoff's waits
    with dropping_server(drops=1) as (url, seen):
        code = main(["--server", url, "--prompt", "hi", "--mode", mode, "--output-dir", str(tmp_path)])
    assert code == 0, f"expected the resumed stream to succeed, got exit {code}; requests {seen}"
    saved = [(tmp_path / f"segment_{i:03d}.mp4").read_bytes() for i in range(2)]
    assert saved == [b"segment 0", b"segment 1"], f"expected both segments once each, got {saved}"
    resumes = [path for method, path, _ in seen if method == "GET"]
    assert len(resumes) == 2 and all(f"/streams/{REQUEST_ID}?after=1" in path for path in resumes), f"expected two resumes after seq 1, got {resumes}"
    assert {auth for _, _, auth in seen} == {"Bearer key-from-env"}, f"every request must carry the key, got {seen}"
    assert len(sent_ids) == 1 and len(sent_ids[0] or "") >= 22, f"expected an unguessable X-Request-ID (128 bits), got {sent_ids}"


def test_resume_gives_up_with_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr("client.resume.time.sleep", lambda _: None)
    with dropping_server(drops=10) as (url, seen):
        code = main(["--server", url, "--prompt", "hi", "--output-dir", str(tmp_path), "--retries", "2", "--api-key", "k"])
    error = capsys.readouterr().err
    assert code == 1 and f"--resume {REQUEST_ID}" in error and "in 2 tries" in error, f"expected a clear give-up message, got {code}: {error}"
    assert [method for method, _, _ in seen] == ["POST", "GET", "GET"], f"expected one try and 2 retries, got {seen}"
