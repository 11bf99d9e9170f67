"""The web page at `/`, in headless Chromium (Debian's package, driven by Playwright), against the real service
started with `serve run` and the preview backend, paced so that a stream lasts long enough to watch it.

    make browser-deps   # once: Debian's chromium
    .venv/bin/python -m pytest tests/e2e/test_web_page.py -q

Screenshots (first-segment.png, complete.png, bad-upload.png, phone.png) and the downloaded video are written
to tests/e2e/artifacts/ (gitignored).
"""

from __future__ import annotations

import base64
import io
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import httpx
import pytest
import soundfile
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.e2e.server import serve_run
from tests.helpers import EXAMPLE_IMAGE as IMAGE
from tests.helpers import EXAMPLE_SPEECH as SPEECH

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).with_name("artifacts")
SECONDS_PER_STEP = 0.25  # the preview backend is faster than real time: pace it like a model
# As root in a container, with no network: no sandbox, no GPU, nothing that phones home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",  # a user's click on Generate allows sound; a test has no user
    "--use-fake-ui-for-media-stream",  # grant the microphone ...
    "--use-fake-device-for-media-stream",  # ... and make it a synthetic one
]


@dataclass(frozen=True)
class Service:
    url: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    workdir = tmp_path_factory.mktemp("web-page-service")
    with serve_run(workdir, args={"options": {"seconds_per_step": SECONDS_PER_STEP}}) as url:
        yield Service(url, workdir / "serve.log")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make browser-deps` installs Debian's chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, service: Service) -> Iterator[Page]:
    """A fresh browser context on the page; fails the test if the page threw an uncaught error."""
    context = browser.new_context(accept_downloads=True, viewport={"width": 1000, "height": 1400})
    page = context.new_page()
    uncaught: list[str] = []
    page.on("pageerror", lambda error: uncaught.append(str(error)))
    page.goto(service.url + "/")
    expect(page.locator("#service-status")).to_contain_text("ready", timeout=10_000)
    yield page
    context.close()
    assert not uncaught, f"the page threw: {uncaught}"


def artifact(name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / name


def fill_form(page: Page, image: Path | dict = IMAGE, steps: int = 10, seed: int = 1234) -> None:
    page.set_input_files("#image-input", image)
    page.set_input_files("#audio-input", SPEECH)
    page.fill("#prompt-input", "A man on a sofa speaking directly to the camera.")
    page.fill("#steps-input", str(steps))
    page.fill("#seed-input", str(seed))


def example_body(**fields: object) -> dict:
    return {
        "prompt": "A man on a sofa speaking directly to the camera.",
        "image_base64": base64.b64encode(IMAGE.read_bytes()).decode(),
        "audio_base64": base64.b64encode(SPEECH.read_bytes()).decode(),
        **fields,
    }


# ---------------------------------------------------------------------------------------------------------


def test_plays_while_streaming_then_downloads_the_whole_video(page: Page, service: Service) -> None:
    fill_form(page, steps=10, seed=1234)
    page.click("#generate-button")
    clicked = time.monotonic()

    # Playback has started and advanced while segments are still arriving: read in one evaluation, so the
    # time, the count and the controls are of the same moment.
    during = page.wait_for_function(
        """() => {
            const video = document.querySelector('#player');
            const received = document.querySelector('#segment-progress');
            if (video.currentTime > 0.3 && received.value < received.max) {
                return {currentTime: video.currentTime, received: received.value, total: received.max, paused: video.paused,
                        firstSegment: document.querySelector('#fact-first-segment').textContent,
                        stopEnabled: !document.querySelector('#stop-button').disabled,
                        downloadEnabled: !document.querySelector('#download-button').disabled};
            }
            return null;
        }""",
        timeout=60_000,
    ).json_value()
    assert during["total"] >= 2 and 1 <= during["received"] < during["total"], during
    assert not during["paused"]
    assert re.fullmatch(r"\d+\.\d+ s", during["firstSegment"].strip()), during
    assert during["stopEnabled"] and not during["downloadEnabled"], during
    page.screenshot(path=artifact("first-segment.png"), full_page=True)

    expect(page.locator("#status")).to_contain_text("Done", timeout=60_000)
    elapsed = time.monotonic() - clicked
    total = int(during["total"])
    video_fact = page.inner_text("#fact-video")
    num_frames = int(re.search(r"(\d+) frames", video_fact).group(1))
    assert page.locator("#segment-progress").evaluate("p => [p.value, p.max]") == [total, total]
    assert page.locator("#segment-list li[data-buffered='true']").count() == total
    assert page.is_disabled("#stop-button") and page.is_enabled("#download-button")

    # Every segment is in one gapless buffered range, audio and video (the element's ranges are their
    # intersection), and playback runs through the segment boundaries to the end.
    ranges = page.evaluate(
        "() => { const b = document.querySelector('#player').buffered; return [...Array(b.length)].map((_, i) => [b.start(i), b.end(i)]); }"
    )
    assert len(ranges) == 1 and ranges[0][0] < 0.05 and abs(ranges[0][1] - num_frames / 25) < 0.1, ranges
    page.wait_for_function("() => document.querySelector('#player').ended", timeout=30_000)
    played = page.evaluate(
        """() => {
            const video = document.querySelector('#player');
            return {error: video.error && video.error.message, frames: video.getVideoPlaybackQuality().totalVideoFrames,
                    audioBytes: video.webkitAudioDecodedByteCount};
        }"""
    )
    assert played["error"] is None and played["frames"] == num_frames, played
    page.screenshot(path=artifact("complete.png"), full_page=True)

    with page.expect_download() as download_info:
        page.click("#download-button")
    download = download_info.value
    assert download.suggested_filename == "avatar-1234.mp4"
    saved = artifact("downloaded.mp4")
    download.save_as(saved)
    with av.open(str(saved)) as container:
        assert container.streams.audio, "the downloaded video has no audio"
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(frames) == num_frames
    with av.open(str(saved)) as container:
        audio_sizes = [packet.size for packet in container.demux(audio=0) if packet.size]
    # Chromium decoded every audio packet of every segment: none was dropped at a boundary. (It counts the
    # bytes as it hands them to its decoder, with a 7-byte ADTS header added to each AAC packet.)
    assert played["audioBytes"] in (sum(audio_sizes), sum(audio_sizes) + 7 * len(audio_sizes)), (played, sum(audio_sizes))
    print(f"\nstream of {total} segments, {num_frames} frames: done {elapsed:.1f} s after the click; first segment {during['firstSegment']}")

    # The same request to /generate gives the same video: the page joined the segments losslessly.
    response = httpx.post(service.url + "/generate", json=example_body(num_steps=10, seed=1234), timeout=120)
    response.raise_for_status()
    with av.open(io.BytesIO(base64.b64decode(response.json()["video_base64"]))) as container:
        reference = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(reference) == len(frames)
    assert all((a == b).all() for a, b in zip(frames, reference, strict=True))


def test_a_bad_upload_shows_the_services_error(page: Page, service: Service) -> None:
    not_an_image = {"name": "face.png", "mimeType": "image/png", "buffer": b"this is not a picture"}
    fill_form(page, image=not_an_image)
    page.click("#generate-button")

    error_box = page.locator("#error-box")
    expect(error_box).to_be_visible(timeout=30_000)
    expected = httpx.post(
        service.url + "/generate-stream",
        json=example_body(image_base64=base64.b64encode(not_an_image["buffer"]).decode(), num_steps=10, seed=1234),
        timeout=30,
    )
    assert expected.status_code == 422
    error = expected.json()["error"]
    expect(page.locator("#error-message")).to_have_text(error["message"])
    expect(page.locator("#error-detail")).to_contain_text(f"HTTP 422, code {error['code']}")
    # The field the service names is marked, with the message beside it.
    assert error["field"] == "image_base64"
    expect(page.locator("#image-input")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#image-error")).to_have_text(error["message"])
    assert page.is_enabled("#generate-button") and page.is_disabled("#stop-button") and page.is_disabled("#download-button")
    page.screenshot(path=artifact("bad-upload.png"), full_page=True)


def test_stop_cancels_the_request_on_the_service(page: Page, service: Service) -> None:
    fill_form(page, steps=40, seed=7)  # 10 s a segment: without the cancel, the generator stays busy for long
    page.click("#generate-button")
    page.wait_for_function("() => document.querySelector('#step-progress').value >= 2", timeout=60_000)
    request_id = page.inner_text("#fact-request")
    page.click("#stop-button")

    expect(page.locator("#status")).to_contain_text("Stopped", timeout=10_000)
    assert page.is_enabled("#generate-button") and page.is_disabled("#stop-button") and page.is_disabled("#download-button")
    expect(page.locator("#error-box")).to_be_hidden()
    expect(page.locator("#segment-list li").last).to_contain_text("not made (stopped)")

    cancelled = f"request {request_id} cancelled by the client"
    deadline = time.monotonic() + 15
    while cancelled not in service.log_text():
        assert time.monotonic() < deadline, f"the service did not log {cancelled!r}"
        time.sleep(0.2)
    assert httpx.get(service.url + "/health", timeout=5).status_code == 200
    # The one generator slot is free again: a new request starts at once and completes.
    started = time.monotonic()
    events = []
    with httpx.stream("POST", service.url + "/generate-stream", json=example_body(num_steps=1), timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event: "):
                events.append((line.removeprefix("event: "), time.monotonic() - started))
    started_events = [event for event in events if event[0] != "queued"]  # a loaded machine may say queued first
    assert started_events[0][0] == "start" and started_events[0][1] < 5, events
    assert events[-1][0] == "complete", events


def test_a_dropped_stream_resumes_and_keeps_what_played(page: Page, service: Service) -> None:
    """The POST's connection ends after segment 0: the page resumes with Last-Event-ID and completes."""

    def cut_after_first_segment(route) -> None:
        events = route.fetch(timeout=120_000).text().split("\n\n")
        first = next(i for i, event in enumerate(events) if "event: segment" in event)
        route.fulfill(status=200, content_type="text/event-stream", body="\n\n".join(events[: first + 1]) + "\n\n")

    resumes: list[str | None] = []
    page.route("**/generate-stream", cut_after_first_segment)
    page.on("request", lambda request: resumes.append(request.headers.get("last-event-id")) if "/streams/" in request.url else None)
    fill_form(page, steps=1, seed=3)
    page.click("#generate-button")
    expect(page.locator("#status")).to_contain_text("Done:", timeout=120_000)
    expect(page.locator("#error-box")).to_be_hidden()
    assert len(resumes) == 1 and re.fullmatch(r"[\w.:-]+:\d+", resumes[0] or ""), f"expected one resume with a Last-Event-ID, got {resumes}"
    items = page.locator("#segment-list li").all_inner_texts()
    assert items and all("not made" not in item for item in items), f"expected every segment received, got {items}"


def test_records_speech_from_the_microphone_as_wav(page: Page) -> None:
    page.click("#record-button")
    expect(page.locator("#record-status")).to_contain_text("Recording 0:01", timeout=10_000)
    page.click("#record-button")
    expect(page.locator("#audio-info")).to_contain_text("Recorded: recording.wav", timeout=10_000)
    expect(page.locator("#audio-preview")).to_be_visible()
    encoded = page.evaluate(
        """async () => {
            const bytes = new Uint8Array(await document.querySelector('#audio-input').files[0].arrayBuffer());
            let text = '';
            for (const byte of bytes) text += String.fromCharCode(byte);
            return btoa(text);
        }"""
    )
    samples, rate = soundfile.read(io.BytesIO(base64.b64decode(encoded)))
    assert rate == 24000 and samples.ndim == 1
    assert 0.8 < len(samples) / rate < 10
    assert abs(samples).max() > 0.01, "the fake microphone's beep is missing: the recording is silent"


def test_dropped_files_go_where_their_type_belongs(page: Page) -> None:
    """Both files dropped at once on the image's zone: the image goes to the image, the speech to the speech."""
    page.evaluate(
        """([image, speech]) => {
            const file = (b64, name, type) => new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], name, {type});
            const transfer = new DataTransfer();
            transfer.items.add(file(speech, 'speech_en.mp3', 'audio/mpeg'));
            transfer.items.add(file(image, 'man_on_sofa.jpeg', 'image/jpeg'));
            const zone = document.querySelector('#image-zone');
            for (const type of ['dragenter', 'dragover', 'drop']) {
                zone.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, bubbles: true, cancelable: true}));
            }
        }""",
        [base64.b64encode(IMAGE.read_bytes()).decode(), base64.b64encode(SPEECH.read_bytes()).decode()],
    )
    expect(page.locator("#image-info")).to_have_text(re.compile(r"^Selected: man_on_sofa\.jpeg, \d+ kB$"))
    expect(page.locator("#audio-info")).to_have_text(re.compile(r"^Selected: speech_en\.mp3, \d+ kB$"))
    assert page.evaluate(
        "() => [document.querySelector('#image-input').files[0].name, document.querySelector('#audio-input').files[0].name]"
    ) == ["man_on_sofa.jpeg", "speech_en.mp3"]
    page.wait_for_function("() => document.querySelector('#image-preview').naturalWidth > 0")


def test_form_is_labelled_keyboard_reachable_and_fits_a_phone(page: Page) -> None:
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, textarea, button, video, progress')]
            .filter((el) => !(el.labels?.length || el.getAttribute('aria-label') || el.textContent.trim()))
            .map((el) => el.id)"""
    )
    assert unlabelled == []
    page.focus("#image-input")
    reached = []
    for _ in range(12):
        reached.append(page.evaluate("() => document.activeElement.id"))
        page.keyboard.press("Tab")
    for control in ["image-input", "audio-input", "record-button", "prompt-input", "steps-input", "seed-input", "generate-button"]:
        assert control in reached, reached
    # Submitting with the keyboard and nothing chosen marks the missing fields and moves focus to the first.
    page.set_input_files("#image-input", [])
    page.focus("#generate-button")
    page.keyboard.press("Enter")
    expect(page.locator("#image-error")).to_have_text("Choose or drop a face image.")
    expect(page.locator("#audio-error")).to_be_visible()
    assert page.evaluate("() => document.activeElement.id") == "image-input"

    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    page.screenshot(path=artifact("phone.png"), full_page=True)


SSE_SAMPLE = "".join(
    [
        ": keep-alive\r\n\r\n",  # a comment, CR LF line ends
        'event: start\r\ndata: {"a": 1}\r\n\r\n',
        'event: segment\ndata: {"b":\ndata:  "é"}\n\n',  # two data lines; one space after the colon is dropped
        "event: complete\rdata:{}\r\r",  # CR line ends, no space after the colon
    ]
)


def test_event_stream_parser_handles_every_chunk_split(page: Page) -> None:
    """The page's SSE parser gives the same events however the network cuts the stream (CR LF split too)."""
    results = page.evaluate(
        """async (text) => {
            const { SseParser } = await import('/static/sse.js');
            const runs = [];
            for (let cut = 0; cut <= text.length; cut += 1) {
                const parser = new SseParser();
                const events = [...parser.push(text.slice(0, cut)), ...parser.push(text.slice(cut))];
                runs.push(JSON.stringify(events.map((e) => [e.type, e.data])) + (parser.incomplete ? ' incomplete' : ''));
            }
            return [...new Set(runs)];
        }""",
        SSE_SAMPLE,
    )
    expected = [["start", '{"a": 1}'], ["segment", '{"b":\n "é"}'], ["complete", "{}"]]
    assert results == [json.dumps(expected, separators=(",", ":"), ensure_ascii=False)]


START_EVENT = {
    "request_id": "r1",
    "total_segments": 3,
    "fps": 25,
    "width": 720,
    "height": 400,
    "num_frames": 201,
    "duration_s": 8.04,
    "lead_in_s": 0.3,
    "num_steps": 4,
    "seed": 5,
    "backend": "preview",
}


def sse(*events: tuple[str, dict]) -> str:
    return "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events)


@pytest.mark.parametrize(
    ("answer", "title", "message", "detail"),
    [
        pytest.param(
            {
                "status": 200,
                "content_type": "text/event-stream",
                "body": sse(
                    ("start", START_EVENT),
                    ("progress", {"segment_index": 0, "step": 1, "num_steps": 4}),
                    ("error", {"error": {"code": "generation_failed", "message": "The backend ran out of memory."}}),
                ),
            },
            "The generation failed",
            "The backend ran out of memory.",
            "code generation_failed, after 0 of 3 segments",
            id="error-event",
        ),
        pytest.param(
            {
                "status": 200,
                "content_type": "text/event-stream",
                "body": sse(
                    ("queued", {"message": "Waiting for a free generator", "request_id": "r1", "ahead": 2, "ahead_scope": "ingress"}),
                    ("error", {"error": {"code": "queue_timeout", "message": "no generator was free within 600 s; retry later"}}),
                ),
            },
            "No generator became free in time",
            "no generator was free within 600 s; retry later",
            "code queue_timeout, while the request was queued",
            id="queue-timeout",
        ),
        pytest.param(
            {
                "status": 503,
                "headers": {"Retry-After": "5"},
                "content_type": "application/json",
                "body": json.dumps(
                    {"success": False, "error": {"code": "overloaded", "message": "Every generator is busy.", "field": None}}
                ),
            },
            "The service is busy or not ready",
            "Every generator is busy.",
            "HTTP 503, code overloaded, try again in 5 s",
            id="http-503",
        ),
        pytest.param(
            {"status": 502, "content_type": "text/html", "body": "<h1>Bad Gateway</h1>"},
            "The service answered with an error",
            "HTTP 502 Bad Gateway",
            "HTTP 502",
            id="proxy-502",
        ),
        pytest.param(
            {"status": 200, "content_type": "text/event-stream", "body": sse(("start", START_EVENT)) + "event: progress\ndata: {"},
            "The stream ended too early",
            "The connection closed before the video was complete (0 of 3 segments).",
            "The last event was cut off.",
            id="cut-off",
        ),
        pytest.param(
            None,
            "The service could not be reached",
            "The request could not be sent",
            "",
            id="network-down",
        ),
    ],
)
def test_every_failure_has_a_clear_message(page: Page, answer: dict | None, title: str, message: str, detail: str) -> None:
    """Failures the example inputs cannot provoke from a healthy service, answered by a stand-in route."""
    page.route("**/generate-stream", lambda route: route.fulfill(**answer) if answer else route.abort("connectionrefused"))
    fill_form(page, steps=4)
    page.click("#generate-button")
    expect(page.locator("#error-box")).to_be_visible(timeout=10_000)
    expect(page.locator("#error-title")).to_have_text(title)
    expect(page.locator("#error-message")).to_contain_text(message)
    if detail:
        expect(page.locator("#error-detail")).to_have_text(detail)
    assert page.is_enabled("#generate-button") and page.is_disabled("#stop-button") and page.is_disabled("#download-button")
