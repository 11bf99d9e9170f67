"""parse_request: every bad input is refused with the status, code and field of protocol.md."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from model.config import GenerationDefaults
from model.errors import RequestError
from model.request import DEFAULT_PROFILE, Profile, RequestLimits, check_content_type, parse_request, request_schema
from model.responses import openapi_responses
from tests.helpers import EXAMPLE_IMAGE, EXAMPLE_SPEECH, audio_file, b64, body, image_file, speech_like

LIMITS = RequestLimits()
DEFAULTS = GenerationDefaults(num_steps=7, guidance_scale=4.5, overlap_frame=13, num_frames=81, negative_prompt="neg")
WAV = audio_file(speech_like(1.0), 16000)
PNG = image_file(np.full((64, 48, 3), 128, np.uint8))


def refused(raw: bytes, limits: RequestLimits = LIMITS) -> RequestError:
    with pytest.raises(RequestError) as caught:
        parse_request(raw, limits, DEFAULTS)
    return caught.value


def test_defaults_are_resolved() -> None:
    request = parse_request(body(seed=5), LIMITS, DEFAULTS)
    assert (request.num_steps, request.guidance_scale, request.audio_scale, request.overlap_frame) == (7, 4.5, None, 13)
    assert (request.negative_prompt, request.num_frames, request.seed) == ("neg", 81, 5)
    assert request.image is None and request.audio is None


def test_prompt_is_trimmed_and_seed_is_random_when_missing() -> None:
    seeds = {parse_request(body(prompt="  hello  "), LIMITS, DEFAULTS).seed for _ in range(5)}
    assert parse_request(body(prompt="  hello  "), LIMITS, DEFAULTS).prompt == "hello"
    assert len(seeds) > 1 and all(0 <= s < 2**32 for s in seeds), seeds


def test_media_are_decoded() -> None:
    request = parse_request(body(image_base64=b64(PNG), audio_base64="data:audio/wav;base64," + b64(WAV)), LIMITS, DEFAULTS)
    assert request.image.shape == (64, 48, 3) and request.image.dtype == np.uint8
    assert request.audio.samples.shape == (16000,) and request.audio.samples.dtype == np.float32
    assert request.num_frames is None, "with audio the audio sets the length"


@pytest.mark.parametrize(
    ("raw", "status", "code", "field"),
    [
        (b"{not json", 400, "invalid_json", None),
        (b"[1, 2]", 400, "invalid_json", None),
        (b'"text"', 400, "invalid_json", None),
        (json.dumps({"seed": 1}).encode(), 422, "missing_field", "prompt"),
        (body(prompt="   "), 422, "invalid_field", "prompt"),
        (body(colour="red"), 422, "unknown_field", "colour"),
        (body(num_steps=0), 422, "invalid_field", "num_steps"),
        (body(num_steps=101), 422, "invalid_field", "num_steps"),
        (body(num_steps="10"), 422, "invalid_field", "num_steps"),
        (body(num_steps=4.5), 422, "invalid_field", "num_steps"),
        (body(num_steps=True), 422, "invalid_field", "num_steps"),
        (body(guidance_scale=0.5), 422, "invalid_field", "guidance_scale"),
        (body(audio_scale=21), 422, "invalid_field", "audio_scale"),
        (body(height=720, width=721), 422, "invalid_field", "width"),
        (body(height=1296), 422, "invalid_field", "height"),
        (body(seed=-1), 422, "invalid_field", "seed"),
        (body(seed=2**32), 422, "invalid_field", "seed"),
        (body(overlap_frame=12), 422, "invalid_field", "overlap_frame"),
        (body(prompt=7), 422, "invalid_field", "prompt"),
        (body(negative_prompt="x" * 2001), 422, "invalid_field", "negative_prompt"),
        (body(prompt="x" * 2001), 422, "invalid_field", "prompt"),
        (body(image_base64="not base64!!"), 422, "invalid_base64", "image_base64"),
        (body(audio_base64="AAA"), 422, "invalid_base64", "audio_base64"),
        (body(image_base64=b64(b"just some text, not an image")), 422, "invalid_image", "image_base64"),
        (body(audio_base64=b64(b"just some text, not audio")), 422, "invalid_audio", "audio_base64"),
        (body(audio_base64=b64(WAV[: len(WAV) // 2])), 422, "invalid_audio", "audio_base64"),
        (body(audio_base64=b64(audio_file(speech_like(1.0), 16000, "FLAC")[:3000])), 422, "invalid_audio", "audio_base64"),
        (body(audio_base64=b64(WAV), num_frames=50), 422, "invalid_field", "num_frames"),
        (body(num_frames=15002), 422, "invalid_field", "num_frames"),
        (b'{"prompt": "hi", "seed": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "invalid_json", None),
        (b'{"prompt": "hi", "seed": ' + b"[" * 3000 + b"]" * 3000 + b"}", 400, "invalid_json", None),
        (b'{"prompt": "hi", "seed": [' + b"0," * 10_000 + b"0]}", 400, "invalid_json", None),
        (b'{"prompt": "hi", "seed": ' + b"9" * 5000 + b"}", 422, "invalid_field", "seed"),
        (b'{"prompt": "hi", "num_steps": -' + b"9" * 5000 + b"}", 422, "invalid_field", "num_steps"),
        (b'{"prompt": ' + b"1" * 5000 + b"}", 422, "invalid_field", "prompt"),
        (b'{"prompt": "hi", "guidance_scale": 1e999}', 422, "invalid_field", "guidance_scale"),
        (b'{"prompt": "hi", "guidance_scale": NaN}', 400, "invalid_json", None),
        (b'{"prompt": "hi", "seed": -Infinity}', 400, "invalid_json", None),
        (body(tea_cache_threshold=-0.1), 422, "invalid_field", "tea_cache_threshold"),
        (body(tea_cache_threshold=1.5), 422, "invalid_field", "tea_cache_threshold"),
        (body(num_steps=None), 422, "invalid_field", "num_steps"),
        (b'{"prompt": "hi \\ud800 there"}', 400, "invalid_json", None),
        (b'{"prompt": "hi", "\\udfff": 1}', 400, "invalid_json", None),
    ],
)
def test_bad_input_is_refused(raw: bytes, status: int, code: str, field: str | None) -> None:
    error = refused(raw)
    assert (error.status, error.code, error.field) == (status, code, field), f"{error.status} {error.code} {error.field}: {error.message}"
    assert error.message and "Traceback" not in error.message


def test_error_messages_name_the_value_and_the_rule() -> None:
    assert "unknown field 'colour'" in refused(body(colour="red")).message
    message = refused(body(num_steps=500)).message
    assert "num_steps" in message and "100" in message and "500" in message, message
    assert "1 + 4n" in refused(body(overlap_frame=12)).message


def test_body_and_media_limits() -> None:
    small = RequestLimits(max_body_bytes=1000, max_audio_s=0.5, max_image_side=32)
    assert (refused(body(prompt="x" * 2000), small).status, refused(body(prompt="x" * 2000), small).code) == (413, "body_too_large")
    roomy = RequestLimits(max_audio_s=0.5, max_image_side=32)
    assert refused(body(audio_base64=b64(WAV)), roomy).code == "audio_too_long"
    assert refused(body(image_base64=b64(PNG)), roomy).code == "image_too_large"


def test_content_type() -> None:
    check_content_type("application/json")
    check_content_type("application/json; charset=utf-8")
    for wrong in (None, "text/plain", "multipart/form-data; boundary=x"):
        with pytest.raises(RequestError) as caught:
            check_content_type(wrong)
        assert (caught.value.status, caught.value.code) == (415, "unsupported_media_type")


def test_image_formats_orientation_and_alpha() -> None:
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:, :30] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    rotated = parse_request(body(image_base64=b64(image_file(pixels, "JPEG", exif=exif, quality=95))), LIMITS, DEFAULTS).image
    assert rotated.shape == (60, 40, 3), f"EXIF orientation 6 should give a 60x40 upright image, got {rotated.shape}"
    assert rotated[:30].mean() > 200 and rotated[30:].mean() < 50, "the white half should end up on top"
    rgba = np.dstack([np.full((8, 8, 3), 90, np.uint8), np.zeros((8, 8), np.uint8)])
    assert parse_request(body(image_base64=b64(image_file(rgba, "PNG"))), LIMITS, DEFAULTS).image.shape == (8, 8, 3)
    assert parse_request(body(image_base64=b64(image_file(pixels, "WEBP"))), LIMITS, DEFAULTS).image.shape == (40, 60, 3)
    gif = refused(body(image_base64=b64(image_file(pixels, "GIF"))))
    assert gif.code == "invalid_image" and "GIF" in gif.message


def test_audio_formats_decode_to_16k_mono() -> None:
    tone = speech_like(1.0, rate=44100, channels=2)
    for fmt in ("WAV", "FLAC", "OGG", "MP3"):
        audio = parse_request(body(audio_base64=b64(audio_file(tone, 44100, fmt))), LIMITS, DEFAULTS).audio
        assert abs(len(audio.samples) - 16000) <= 1200, f"{fmt}: expected about 16000 samples, got {len(audio.samples)}"
        assert audio.playback.shape[0] == 2 and audio.playback_rate == 44100, (fmt, audio.playback.shape, audio.playback_rate)
    wav = parse_request(body(audio_base64=b64(audio_file(tone, 44100))), LIMITS, DEFAULTS).audio
    assert len(wav.samples) == 16000, "librosa's length: ceil(44100 * (16000 / 44100)) = 16000"
    mono16k = speech_like(0.5)[:, 0]
    same = parse_request(body(audio_base64=b64(audio_file(mono16k, 16000, "FLAC"))), LIMITS, DEFAULTS).audio.samples
    np.testing.assert_allclose(same, mono16k, atol=1 / 32768, err_msg="16 kHz mono passes through (FLAC is 16-bit)")


def test_example_files_decode() -> None:
    request = parse_request(
        body(image_base64=b64(EXAMPLE_IMAGE.read_bytes()), audio_base64=b64(EXAMPLE_SPEECH.read_bytes())), LIMITS, DEFAULTS
    )
    assert request.image.shape == (1104, 1472, 3)
    assert 5.8 < request.audio.duration_s < 6.2, request.audio.duration_s


def test_a_huge_unknown_field_name_is_shortened() -> None:
    error = refused(body(**{"x" * 100_000: 1}))
    assert error.code == "unknown_field" and len(error.field) <= 64 and len(error.message) < 400, (len(error.field), len(error.message))


def test_huge_integers_are_named_without_being_converted() -> None:
    message = refused(b'{"prompt": "hi", "seed": ' + b"9" * 5000 + b"}").message
    assert "5000-digit" in message and len(message) < 200, message


def test_limits_and_defaults_are_injected_into_one_schema() -> None:
    limits = RequestLimits(max_prompt_chars=20, max_tea_cache_threshold=0.5)
    properties = request_schema(limits, DEFAULTS)["properties"]
    assert properties["prompt"]["maxLength"] == 20 and properties["negative_prompt"]["maxLength"] == 20, properties["prompt"]
    assert properties["num_steps"]["default"] == 7 and properties["negative_prompt"]["default"] == "neg"
    assert properties["tea_cache_threshold"]["maximum"] == 0.5 and properties["tea_cache_threshold"]["default"] == 0.0
    assert all(p.get("description") for p in properties.values()), "every field is documented"
    assert refused(body(negative_prompt="x" * 21), limits).field == "negative_prompt"
    assert refused(body(tea_cache_threshold=0.6), limits).field == "tea_cache_threshold"
    assert parse_request(body(tea_cache_threshold=0.2), limits, DEFAULTS).tea_cache_threshold == 0.2
    assert parse_request(body(), limits, DEFAULTS).tea_cache_threshold == 0.0, "0 (off) unless the model config says otherwise"


PROFILES = (Profile("quality", DEFAULTS), Profile("fast", GenerationDefaults(num_steps=2, guidance_scale=1.0, num_frames=41), fps=16))


def refused_as(raw: bytes, limits: RequestLimits) -> RequestError:
    with pytest.raises(RequestError) as caught:
        parse_request(raw, limits, profiles=PROFILES)
    return caught.value


def test_a_profile_brings_its_own_defaults_and_frame_rate() -> None:
    fast = parse_request(body(profile="fast"), LIMITS, profiles=PROFILES)
    assert (fast.profile, fast.num_steps, fast.guidance_scale, fast.num_frames) == ("fast", 2, 1.0, 41), fast
    one_second = RequestLimits(max_audio_s=1.0)  # at most 1 + 1 s of frames: 26 at 25 fps, 17 at the fast profile's 16
    assert parse_request(body(num_frames=20), one_second, profiles=PROFILES).num_frames == 20
    assert "less than or equal to 17" in refused_as(body(profile="fast", num_frames=20), one_second).message
    default = parse_request(body(num_steps=3), LIMITS, profiles=PROFILES)
    assert (default.profile, default.num_steps, default.guidance_scale) == ("quality", 3, 4.5), default
    assert parse_request(body(), LIMITS, DEFAULTS).profile == DEFAULT_PROFILE, "without profiles, one named default"


@pytest.mark.parametrize("named", ["turbo", "", 5, ["fast"], None])
def test_an_unknown_profile_is_refused_naming_the_known_ones(named: object) -> None:
    error = refused_as(body(profile=named), LIMITS)
    assert (error.status, error.field) == (422, "profile"), (error.status, error.field, error.message)
    assert "'quality' or 'fast'" in error.message, f"the message should name the known profiles: {error.message}"


def test_the_schema_offers_the_profiles() -> None:
    field = request_schema(LIMITS, DEFAULTS, profiles=("quality", "fast"))["properties"]["profile"]
    assert (field["enum"], field["default"]) == (["quality", "fast"], "quality"), field
    single = request_schema(LIMITS, DEFAULTS)["properties"]["profile"]
    assert (single.get("const"), single["default"]) == (DEFAULT_PROFILE, DEFAULT_PROFILE), single


@pytest.mark.parametrize("media_type", ["text/event-stream", "application/x-ndjson", None])
def test_response_schemas_stand_alone(media_type: str | None) -> None:
    """The schemas sit inside an OpenAPI document: no reference may point at a `$defs` that is not there."""
    responses = openapi_responses(media_type)
    text = json.dumps(responses)
    assert "$ref" not in text and "$defs" not in text, text[:300]
    assert set(responses) == {200, 400, 408, 413, 415, 422, 503}, sorted(responses)
    assert "segment_base64" in text or media_type is None, "the stream's segment event is described"
