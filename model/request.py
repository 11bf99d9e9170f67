"""The generate request: its JSON fields declared once, in request_model(), with a deployment's limits and
model defaults filled in (the same model validates bodies and is the OpenAPI schema), and parse_request()
that turns a body into a validated, decoded, frozen GenerateRequest or raises a RequestError naming the field.

Every accepted body has a bounded cost: the body size, the count of JSON values, the nesting and the digits
of an integer are limited before any field is looked at, and the media decoders bound theirs.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import random
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, create_model, field_validator

from model.config import GenerationDefaults
from model.errors import RequestError
from model.media.audio import MAX_CHANNELS, MAX_SAMPLE_RATE, DecodedAudio, decode_audio
from model.media.image import decode_image

MAX_SEED = 2**32 - 1
MAX_INTEGER_DIGITS = 20  # the longest integer a field takes, a seed, has 10 digits
DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+(;[\w-]+=[\w.-]+)*;base64,", re.IGNORECASE)
JSON_CONTENT_TYPES = ("application/json",)
MEDIA_FIELDS = ("image_base64", "audio_base64")
MAX_FIELD_NAME_CHARS = 64  # of an unknown field's name, as errors repeat it
DEFAULT_PROFILE = "default"  # the name of a service's only profile when its serve config declares none


@dataclass(frozen=True)
class RequestLimits:
    """Service limits on what a client may send (configurable in serve_config.yaml)."""

    max_body_bytes: int = 64 * 1024 * 1024
    max_audio_s: float = 600.0
    max_audio_sample_rate: int = MAX_SAMPLE_RATE
    max_audio_channels: int = MAX_CHANNELS
    max_image_side: int = 4096
    max_prompt_chars: int = 2000
    max_tea_cache_threshold: float = 0.5


@dataclass(frozen=True)
class Profile:
    """A served profile as a request sees it: its name and its model config's request defaults and frame rate."""

    name: str = DEFAULT_PROFILE
    defaults: GenerationDefaults = GenerationDefaults()
    fps: int = 25


class OversizedInteger:
    """Stands in for a JSON integer with more than MAX_INTEGER_DIGITS digits, so that validation refuses it
    by field instead of Python converting thousands of digits."""

    def __init__(self, digits: str) -> None:
        self.digits = len(digits.lstrip("-"))


class _FieldRules(BaseModel):
    """Rules across fields' values that a Field constraint cannot say."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @field_validator("overlap_frame", check_fields=False)
    @classmethod
    def _overlap_form(cls, value: int) -> int:
        if value % 4 != 1:
            raise ValueError("must be of the form 1 + 4n (1, 5, 9, 13, ...)")
        return value


@functools.lru_cache(maxsize=16)
def request_model(
    limits: RequestLimits, defaults: GenerationDefaults, fps: int = 25, profiles: tuple[str, ...] = (DEFAULT_PROFILE,)
) -> type[BaseModel]:
    """The JSON body of /generate, /generate-stream and /generate-stream-chunked: each field's type, rule,
    default and documentation, with `limits` and the model config's `defaults` filled in; `profiles` are the
    names a request may choose from, the first the default."""
    prompt_chars = limits.max_prompt_chars
    max_frames = int(limits.max_audio_s * fps) + 1
    return create_model(
        "GenerateFields",
        __base__=_FieldRules,
        __doc__="The JSON body of the three generate endpoints.",
        profile=(
            Literal[profiles],
            Field(
                profiles[0],
                description=f"The service profile that generates the video: {', '.join(profiles)}. Each has its own model"
                " configuration and defaults (GET /health lists them); the defaults shown here are the default profile's",
            ),
        ),
        prompt=(
            Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=prompt_chars)],
            Field(description=f"What the video shows; 1 to {prompt_chars} characters after trimming"),
        ),
        negative_prompt=(
            Annotated[str, StringConstraints(max_length=prompt_chars)],
            Field(defaults.negative_prompt, description=f"What the video should avoid; up to {prompt_chars} characters"),
        ),
        image_base64=(
            str | None,
            Field(
                None,
                description=f"The reference face: JPEG, PNG or WebP, base64 (a data: URL prefix is accepted), up to"
                f" {limits.max_image_side} px a side. It sets the frame size (the closest aspect-ratio bucket)",
            ),
        ),
        audio_base64=(
            str | None,
            Field(
                None,
                description=f"The speech: WAV, MP3, FLAC or OGG, base64 (a data: URL prefix is accepted), up to"
                f" {limits.max_audio_s:g} s, {limits.max_audio_sample_rate} Hz and {limits.max_audio_channels} channels."
                " It sets the video length",
            ),
        ),
        height=(int, Field(720, ge=128, le=1280, multiple_of=16, description="Frame height; only without an image")),
        width=(int, Field(720, ge=128, le=1280, multiple_of=16, description="Frame width; only without an image")),
        num_frames=(int, Field(defaults.num_frames, ge=1, le=max_frames, description="Only without audio: the video length in frames")),
        num_steps=(int, Field(defaults.num_steps, ge=1, le=100, description="Denoising steps per segment")),
        guidance_scale=(float, Field(defaults.guidance_scale, ge=1, le=20, description="Classifier-free guidance scale")),
        audio_scale=(
            float | None,
            Field(defaults.audio_scale, ge=1, le=20, description="Audio guidance scale; null: the same as guidance_scale"),
        ),
        overlap_frame=(
            int,
            Field(defaults.overlap_frame, ge=1, description="Frames each segment re-renders from the previous one: 1 + 4n, smaller than a segment"),
        ),
        seed=(int | None, Field(None, ge=0, le=MAX_SEED, description="The same seed and inputs give the same video; null: random")),
        tea_cache_threshold=(
            float,
            Field(
                defaults.tea_cache_threshold,
                ge=0,
                le=limits.max_tea_cache_threshold,
                description="TeaCache: skip a step's blocks while the accumulated change stays under it; 0: off",
            ),
        ),
    )


def request_schema(
    limits: RequestLimits, defaults: GenerationDefaults, fps: int = 25, profiles: tuple[str, ...] = (DEFAULT_PROFILE,)
) -> dict[str, Any]:
    """The OpenAPI (JSON Schema) of the request body."""
    return request_model(limits, defaults, fps, profiles).model_json_schema()


@dataclass(frozen=True, eq=False)
class GenerateRequest:
    """A validated request with its media decoded and every default resolved."""

    prompt: str
    negative_prompt: str
    image: np.ndarray | None  # (H, W, 3) uint8 RGB, upright
    audio: DecodedAudio | None
    height: int  # used only without an image
    width: int
    num_frames: int | None  # only without audio
    num_steps: int
    guidance_scale: float
    audio_scale: float | None
    overlap_frame: int
    seed: int
    tea_cache_threshold: float = 0.0  # 0: off
    profile: str = DEFAULT_PROFILE


def check_content_type(content_type: str | None) -> None:
    """415 unless the body is declared as JSON."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type not in JSON_CONTENT_TYPES:
        raise RequestError(
            "unsupported_media_type",
            f"send the request as Content-Type: application/json (got {content_type or 'none'})",
            status=415,
        )


def parse_request(
    body: bytes, limits: RequestLimits, defaults: GenerationDefaults = GenerationDefaults(), fps: int = 25, profiles: tuple[Profile, ...] = ()
) -> GenerateRequest:
    """Validate a JSON body and decode its media. Raises RequestError (400/413/422) naming the bad field.

    `profiles` are those a request may name, the first its default; without them, one profile named
    DEFAULT_PROFILE with `defaults` and `fps`. A request's defaults and frame rate are its profile's."""
    if len(body) > limits.max_body_bytes:
        raise body_too_large(len(body), limits)
    _check_json_size(body, limits)
    served = profiles or (Profile(DEFAULT_PROFILE, defaults, fps),)
    data = _parse_json_object(body)
    named = data.get("profile")
    profile = next((p for p in served if isinstance(named, str) and p.name == named), served[0])
    model = request_model(limits, profile.defaults, profile.fps, tuple(p.name for p in served))  # an unknown name fails here
    fields = _validate_fields(model, data)
    if fields.audio_base64 is not None and "num_frames" in fields.model_fields_set:
        raise RequestError(
            "invalid_field", "num_frames applies only without audio: the audio sets the video length", "num_frames"
        )
    image = None
    if fields.image_base64 is not None:
        image = decode_image(decode_base64(fields.image_base64, "image_base64"), limits.max_image_side)
    audio = None
    if fields.audio_base64 is not None:
        audio = decode_audio(
            decode_base64(fields.audio_base64, "audio_base64"),
            limits.max_audio_s,
            profile.fps,
            max_sample_rate=limits.max_audio_sample_rate,
            max_channels=limits.max_audio_channels,
        )
    values = fields.model_dump(exclude=set(MEDIA_FIELDS))
    return GenerateRequest(
        **values
        | {
            "image": image,
            "audio": audio,
            "num_frames": None if audio is not None else values["num_frames"],
            "seed": random.randint(0, MAX_SEED) if values["seed"] is None else values["seed"],
        }
    )


def body_too_large(size: int, limits: RequestLimits) -> RequestError:
    return RequestError(
        "body_too_large",
        f"the request body is {size} bytes; the limit is {limits.max_body_bytes} bytes. Send shorter audio or a smaller image",
        status=413,
    )


def decode_base64(value: str, field: str) -> bytes:
    """Standard base64 (whitespace and a data: URL prefix allowed) -> bytes, or RequestError naming `field`.

    Plain base64 decodes straight from the string; only a value with a prefix or whitespace is copied."""
    prefix = DATA_URL.match(value)
    try:
        return _non_empty(binascii.a2b_base64(value[prefix.end() :] if prefix else value, strict_mode=True), field)
    except (binascii.Error, ValueError):
        pass  # whitespace, or not base64: the general path below says which
    value = DATA_URL.sub("", value.strip(), count=1)
    try:
        data = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError("invalid_base64", f"{field} is not valid base64 ({exc})", field)
    return _non_empty(data, field)


def _non_empty(data: bytes, field: str) -> bytes:
    if not data:
        raise RequestError("invalid_base64", f"{field} is empty", field)
    return data


def _check_json_size(body: bytes, limits: RequestLimits) -> None:
    """400 for a body with more arrays, objects or values than any request has.

    A request is one flat object of about a dozen fields; commas and brackets can appear in it only between
    fields and inside the two prompts. Counting them (at C speed) bounds what parsing may build.
    """
    structural = body.count(b",") + body.count(b"[") + body.count(b"{")
    allowed = 2 * limits.max_prompt_chars + 64
    if structural > allowed:
        raise RequestError(
            "invalid_json",
            f"the body holds {structural} JSON separators and brackets; a request (one flat object) has at most {allowed}",
            status=400,
        )


def _parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body, parse_int=_bounded_int, parse_constant=_refuse_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError("invalid_json", f"the body is not valid JSON ({exc})", status=400)
    except RecursionError:
        raise RequestError("invalid_json", "the body nests JSON arrays or objects too deeply; a request is one flat object", status=400)
    if not isinstance(data, dict):
        raise RequestError(
            "invalid_json", f"the body must be a JSON object with a prompt, not a JSON {type(data).__name__}", status=400
        )
    for text in (*data, *(value for value in data.values() if isinstance(value, str))):
        if not text.isascii() and not _is_unicode(text):
            raise RequestError("invalid_json", "the body holds an unpaired surrogate escape (\\ud800 to \\udfff): not Unicode text", status=400)
    return data


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _bounded_int(digits: str) -> int | OversizedInteger:
    return int(digits) if len(digits) <= MAX_INTEGER_DIGITS + 1 else OversizedInteger(digits)


def _refuse_constant(name: str) -> float:
    raise RequestError("invalid_json", f"the body is not valid JSON: {name} is not a JSON number", status=400)


def _validate_fields(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _field_error(model, exc.errors(include_url=False)[0], len(exc.errors()))


def _field_error(model: type[BaseModel], error: dict[str, Any], count: int) -> RequestError:
    field = ".".join(str(part) for part in error["loc"]) or None
    if field is not None and len(field) > MAX_FIELD_NAME_CHARS:  # an unknown key may be megabytes long
        field = field[: MAX_FIELD_NAME_CHARS - 3] + "..."
    more = f" (and {count - 1} more problem{'s' if count > 2 else ''})" if count > 1 else ""
    if error["type"] == "extra_forbidden":
        allowed = ", ".join(model.model_fields)
        return RequestError("unknown_field", f"unknown field '{field}'; the fields are: {allowed}{more}", field)
    if error["type"] == "missing":
        return RequestError("missing_field", f"'{field}' is required{more}", field)
    got = error.get("input")
    if isinstance(got, OversizedInteger):
        return RequestError("invalid_field", f"{field}: a {got.digits}-digit integer is out of range{more}", field)
    shown = repr(got[:40] + "..." if isinstance(got, str) and len(got) > 40 else got)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    message = error["msg"][0].lower() + error["msg"][1:]
    message = message.removeprefix("value error, ")
    return RequestError("invalid_field", f"{field}: {message} (got {shown}){more}", field)
