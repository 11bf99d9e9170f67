"""An adversarial corpus over real HTTP against the app of serve_config.yaml: malformed and hostile JSON,
bombs and odd encodings of images and audio, boundary values. Each input gets its documented 4xx JSON error
or its stream completes (never an error after `start`), it is answered within a few seconds, and the
service is healthy after it."""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
import soundfile
from PIL import Image
from pydantic import TypeAdapter

from deployments.app import AppArgs
from model.config import load_model_config
from model.responses import SSE_EVENTS, ErrorResponse, HealthResponse, NdjsonLine, VideoResponse

from tests.helpers import audio_file, b64, image_file, png_declaring, speech_like
from tests.integration.conftest import Service
from tests.integration.streams import ndjson_events, sse_events

ANSWER_S = 10.0  # a loose bound: every case is answered in well under a second on an idle machine
JSON_TYPE = {"Content-Type": "application/json"}
FAST = {"num_steps": 1}
DONE = (200, "completed")  # the stream ends with its completed event
NDJSON_LINE = TypeAdapter(NdjsonLine)


@dataclass(frozen=True)
class Case:
    name: str
    raw: bytes
    expected: tuple[int, str | None]  # (status, error code), or DONE
    headers: tuple[tuple[str, str], ...] = tuple(JSON_TYPE.items())


def request(**fields) -> bytes:
    return json.dumps({"prompt": "a person talking", **FAST, **fields}).encode()


def pixels(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(height * width).integers(0, 256, (height, width, 3), dtype=np.uint8)


def saved(image: Image.Image, fmt: str, **args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **args)
    return buffer.getvalue()


def sound(samples: np.ndarray, rate: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def image_case(name: str, data: bytes, expected: tuple[int, str | None]) -> Case:
    return Case(name, request(image_base64=b64(data), num_frames=5), expected)


def audio_case(name: str, data: bytes, expected: tuple[int, str | None]) -> Case:
    return Case(name, request(audio_base64=b64(data)), expected)


def mpo() -> bytes:
    first, second = Image.fromarray(pixels(60, 40)), Image.fromarray(pixels(30, 20))
    return saved(first, "MPO", save_all=True, append_images=[second])


def animated(fmt: str) -> bytes:
    frames = [Image.fromarray(pixels(24, 32 + i)).resize((32, 24)) for i in range(3)]
    return saved(frames[0], fmt, save_all=True, append_images=frames[1:], duration=40, loop=0)


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 8
    return image_file(pixels(48, 64), "JPEG", exif=exif)


def palette_png() -> bytes:
    return saved(Image.fromarray(pixels(32, 32)).convert("P"), "PNG", transparency=0)


SPEECH = speech_like(0.4)
NESTED = b'{"prompt": "hi", "seed": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"

JSON_CASES = [
    Case("nested 100000 deep", NESTED, (400, "invalid_json")),
    Case("nested 3000 deep", b'{"prompt": "hi", "seed": ' + b"[" * 3000 + b"]" * 3000 + b"}", (400, "invalid_json")),
    Case("nested objects", b'{"prompt": "hi", "seed": ' + b'{"a":' * 2000 + b"1" + b"}" * 2001, (400, "invalid_json")),
    Case("a million-element array", b'{"prompt": "hi", "seed": [' + b"0," * 1_000_000 + b"0]}", (400, "invalid_json")),
    Case("100000 unknown keys", b"{" + b",".join(b'"k%d": 1' % i for i in range(100_000)) + b', "prompt": "hi"}', (400, "invalid_json")),
    Case("5000-digit seed", b'{"prompt": "hi", "seed": ' + b"9" * 5000 + b"}", (422, "invalid_field")),
    Case("5000-digit num_steps", b'{"prompt": "hi", "num_steps": ' + b"7" * 5000 + b"}", (422, "invalid_field")),
    Case("negative 5000-digit num_frames", b'{"prompt": "hi", "num_frames": -' + b"1" * 5000 + b"}", (422, "invalid_field")),
    Case("5000-digit prompt", b'{"prompt": ' + b"1" * 5000 + b"}", (422, "invalid_field")),
    Case("huge float", b'{"prompt": "hi", "guidance_scale": 1e999}', (422, "invalid_field")),
    Case("NaN", b'{"prompt": "hi", "guidance_scale": NaN}', (400, "invalid_json")),
    Case("-Infinity", b'{"prompt": "hi", "seed": -Infinity}', (400, "invalid_json")),
    Case("empty body", b"", (400, "invalid_json")),
    Case("null", b"null", (400, "invalid_json")),
    Case("a number", b"5", (400, "invalid_json")),
    Case("a string", b'"prompt"', (400, "invalid_json")),
    Case("invalid UTF-8", b'{"prompt": "\xff\xfe\xfa"}', (400, "invalid_json")),
    Case("UTF-8 byte-order mark", b"\xef\xbb\xbf" + request(num_frames=5), DONE),
    Case("trailing garbage", b'{"prompt": "hi"} {"prompt": "again"}', (400, "invalid_json")),
    Case("prompt too long", request(prompt="x" * 2001), (422, "invalid_field")),
    Case("blank prompt", request(prompt=" \t\n "), (422, "invalid_field")),
    Case("negative prompt too long", request(negative_prompt="x" * 2001), (422, "invalid_field")),
    Case("unknown field", request(fps=30), (422, "unknown_field")),
    Case("__proto__ field", request(__proto__={"admin": True}), (422, "unknown_field")),
    Case("a 1 MB field name", request(**{"x" * 1_000_000: 1}), (422, "unknown_field")),
    Case("seed as a boolean", request(seed=True), (422, "invalid_field")),
    Case("num_steps as a float", request(num_steps=4.0), (422, "invalid_field")),
    Case("num_steps null", request(num_steps=None), (422, "invalid_field")),
    Case("height 0", request(height=0), (422, "invalid_field")),
    Case("width negative", request(width=-16), (422, "invalid_field")),
    Case("width not a multiple of 16", request(width=721), (422, "invalid_field")),
    Case("overlap 10", request(overlap_frame=10), (422, "invalid_field")),
    Case("audio_scale as a string", request(audio_scale="3"), (422, "invalid_field")),
    Case("tea_cache_threshold over its limit", request(tea_cache_threshold=5), (422, "invalid_field")),
    Case("num_frames 0", request(num_frames=0), (422, "invalid_field")),
    Case("num_frames with audio", request(num_frames=9, audio_base64=b64(sound(SPEECH, 16000))), (422, "invalid_field")),
    Case("text/plain", request(), (415, "unsupported_media_type"), (("Content-Type", "text/plain"),)),
    Case("no content type", request(), (415, "unsupported_media_type"), ()),
    Case("form data", b"prompt=hi", (415, "unsupported_media_type"), (("Content-Type", "application/x-www-form-urlencoded"),)),
    Case("lone surrogate in the prompt", b'{"prompt": "hi \\ud800 there", "num_steps": 1, "num_frames": 5}', (400, "invalid_json")),
    Case("lone surrogate as a field name", b'{"prompt": "hi", "\\udfff": 1}', (400, "invalid_json")),
    Case("prompt with NUL, emoji and RTL text", request(prompt="a\x00b \U0001f600 \u202eabc", num_frames=5), DONE),
    Case("duplicate keys: the last wins", b'{"prompt": "hi", "num_steps": 500, "num_steps": 1, "num_frames": 5}', DONE),
    Case("smallest video", request(num_frames=1, height=128, width=128), DONE),
]

BASE64_CASES = [
    Case("invalid base64 characters", request(image_base64="%%%%"), (422, "invalid_base64")),
    Case("base64 of bad length", request(audio_base64="AAA"), (422, "invalid_base64")),
    Case("empty base64", request(image_base64=""), (422, "invalid_base64")),
    Case("data URL of nothing", request(audio_base64="data:audio/wav;base64,"), (422, "invalid_base64")),
]

IMAGE_CASES = [
    image_case("PNG declaring 60000x60000", png_declaring(60000, 60000), (422, "image_too_large")),
    image_case("PNG declaring 20000x20000", png_declaring(20000, 20000), (422, "image_too_large")),
    image_case("PNG declaring 4097x16", png_declaring(4097, 16), (422, "image_too_large")),
    image_case("PNG declaring 0x0", png_declaring(0, 0), (422, "invalid_image")),
    image_case("PNG header without pixels", png_declaring(64, 64), (422, "invalid_image")),
    image_case("truncated PNG", image_file(pixels(64, 64))[:200], (422, "invalid_image")),
    image_case("truncated JPEG", image_file(pixels(64, 64), "JPEG")[:300], (422, "invalid_image")),
    image_case("GIF", image_file(pixels(16, 16), "GIF"), (422, "invalid_image")),
    image_case("BMP", image_file(pixels(16, 16), "BMP"), (422, "invalid_image")),
    image_case("TIFF", image_file(pixels(16, 16), "TIFF"), (422, "invalid_image")),
    image_case("SVG", b'<svg xmlns="http://www.w3.org/2000/svg" width="9999999" height="9999999"/>', (422, "invalid_image")),
    image_case("text", b"hello, world", (422, "invalid_image")),
    image_case("4096x1 strip", image_file(pixels(1, 4096)), DONE),
    image_case("1x4096 strip", image_file(pixels(4096, 1)), DONE),
    image_case("1x1 pixel", image_file(pixels(1, 1)), DONE),
    image_case("MPO (phone JPEG with MPF)", mpo(), DONE),
    image_case("16-bit grey PNG", image_file(np.full((32, 32), 40000, np.uint16)), DONE),
    image_case("CMYK JPEG", saved(Image.fromarray(pixels(32, 32)).convert("CMYK"), "JPEG"), DONE),
    image_case("RGBA WebP", image_file(np.dstack([pixels(32, 32), np.full((32, 32), 128, np.uint8)]), "WEBP"), DONE),
    image_case("palette PNG with transparency", palette_png(), DONE),
    image_case("JPEG with EXIF orientation 8", rotated_jpeg(), DONE),
    image_case("animated PNG", animated("PNG"), DONE),
    image_case("animated WebP", animated("WEBP"), DONE),
    image_case("4096x4096 PNG of zeros (a compression bomb within the limits)", image_file(np.zeros((4096, 4096, 3), np.uint8)), DONE),
]

AUDIO_CASES = [
    audio_case("FLAC 7.1 at 384 kHz", sound(np.zeros((3840, 8), np.float32), 384000, "FLAC"), (422, "audio_sample_rate")),
    audio_case("WAV at 192 kHz", sound(np.zeros((1920, 1), np.float32), 192000), (422, "audio_sample_rate")),
    audio_case("16-channel WAV", sound(np.zeros((1600, 16), np.float32), 16000), (422, "audio_channels")),
    audio_case("WAV at 4 kHz", sound(SPEECH[::4], 4000), (422, "invalid_audio")),
    audio_case("float WAV with NaN", sound(np.full((1600, 1), np.nan, np.float32), 16000, subtype="FLOAT"), (422, "invalid_audio")),
    audio_case("float WAV with infinity", sound(np.full((1600, 1), -np.inf, np.float32), 16000, subtype="FLOAT"), (422, "invalid_audio")),
    audio_case("601 s of silent FLAC", sound(np.zeros((601 * 8000, 1), np.int16), 8000, "FLAC"), (422, "audio_too_long")),
    audio_case("truncated WAV", sound(speech_like(1.0), 16000)[:5000], (422, "invalid_audio")),
    audio_case("WAV header only", sound(np.zeros((0, 1), np.float32), 16000), (422, "invalid_audio")),
    audio_case("AIFF", sound(SPEECH, 16000, "AIFF"), (422, "invalid_audio")),
    audio_case("ID3 tag then garbage", b"ID3\x03\x00\x00\x00\x00\x00\x10" + b"\x00" * 16 + b"\xff\xfb" + b"\x13" * 500, (422, "invalid_audio")),
    audio_case("text", b"just some text, not audio", (422, "invalid_audio")),
    audio_case("float WAV with samples of 1e10", sound(SPEECH * 1e10, 16000, subtype="FLOAT"), DONE),
    audio_case("FLAC 7.1 at 96 kHz", sound(speech_like(0.4, 96000, 8), 96000, "FLAC"), DONE),
    audio_case("WAV at 40 kHz (no AAC rate)", sound(speech_like(0.4, 40000), 40000), DONE),
    audio_case("WAV at 8 kHz", sound(speech_like(0.4, 8000), 8000), DONE),
    audio_case("stereo MP3 at 11025 Hz", audio_file(speech_like(0.4, 11025, 2), 11025, "MP3"), DONE),
    audio_case("one sample", sound(SPEECH[:1], 16000), DONE),
]

CASES = JSON_CASES + BASE64_CASES + IMAGE_CASES + AUDIO_CASES


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input(service: Service, client: httpx.Client, case: Case) -> None:
    sent = time.monotonic()
    with client.stream("POST", f"{service.url}/generate-stream-chunked", content=case.raw, headers=dict(case.headers)) as response:
        answered = time.monotonic() - sent
        if case.expected == DONE:
            assert response.status_code == 200, f"{case.name}: expected a stream, got {response.status_code} {response.read()!r}"
            events = list(ndjson_events(response))
            names = [event.name for event in events]
            assert names[0] == "started" and names[-1] == "completed", f"{case.name}: expected started ... completed, got {names}"
            for event in events:  # every line is one the OpenAPI document describes
                NDJSON_LINE.validate_python(event.data)
        else:
            body = json.loads(response.read())
            got = (response.status_code, body.get("error", {}).get("code"))
            assert got == case.expected, f"{case.name}: expected {case.expected}, got {got}: {body}"
            ErrorResponse.model_validate(body)
            assert len(body["error"]["message"]) < 400 and "Traceback" not in body["error"]["message"], body
    assert answered < ANSWER_S, f"{case.name}: expected an answer within {ANSWER_S} s, got {answered:.1f} s"
    health = client.get(f"{service.url}/health")
    assert health.status_code == 200 and health.json()["status"] == "healthy", f"after {case.name}: {health.text}"


def test_openapi_states_this_deployments_limits_and_defaults(service: Service, client: httpx.Client) -> None:
    args = AppArgs.from_serve_config()
    defaults = load_model_config(args.config).generation
    document = client.get(f"{service.url}/openapi.json").json()
    for route in ("/generate", "/generate-stream", "/generate-stream-chunked"):
        fields = document["paths"][route]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
        got = (fields["num_steps"]["default"], fields["negative_prompt"]["maxLength"], fields["tea_cache_threshold"]["maximum"])
        want = (defaults.num_steps, args.limits.max_prompt_chars, args.limits.max_tea_cache_threshold)
        assert got == want, f"{route}: expected (num_steps default, prompt limit, TeaCache limit) {want}, got {got}"



def test_answers_match_their_typed_models(service: Service, client: httpx.Client) -> None:
    """The models the OpenAPI document is built from describe what the wire carries."""
    small = {"prompt": "a person talking", "audio_base64": b64(sound(SPEECH, 16000)), "num_steps": 2, "seed": 1}
    with client.stream("POST", f"{service.url}/generate-stream", json=small) as response:
        events = list(sse_events(response))
    assert {e.name for e in events} >= {"start", "progress", "segment", "complete"}, [e.name for e in events]
    for event in events:
        SSE_EVENTS[event.name].model_validate(event.data)
    VideoResponse.model_validate(client.post(f"{service.url}/generate", json=small).json())
    HealthResponse.model_validate(client.get(f"{service.url}/health").json())
