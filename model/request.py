"""The generate request: the JSON fields of protocol.md, their limits, and parse_request() that turns a
body into a validated, decoded, frozen GenerateRequest or raises a RequestError naming the field."""

from __future__ import annotations

import base64
import binascii
import json
import random
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from model.config import GenerationDefaults
from model.errors import RequestError
from model.media.audio import DecodedAudio, decode_audio
from model.media.image import decode_image

MAX_SEED = 2**32 - 1
DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+(;[\w-]+=[\w.-]+)*;base64,", re.IGNORECASE)
JSON_CONTENT_TYPES = ("application/json",)


@dataclass(frozen=True)
class RequestLimits:
    """Service limits on what a client may send (configurable in serve_config.yaml)."""

    max_body_bytes: int = 64 * 1024 * 1024
    max_audio_s: float = 600.0
    max_image_side: int = 4096
    max_prompt_chars: int = 2000
    max_tea_cache_threshold: float = 0.5


class GenerateFields(BaseModel):
    """The JSON body of /generate, /generate-stream and /generate-stream-chunked (protocol.md)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(description="What the video shows; 1 to 2000 characters after trimming")
    negative_prompt: str | None = Field(None, max_length=2000, description="Default: the model config's")
    image_base64: str | None = Field(None, description="JPEG, PNG or WebP, base64 (a data: URL prefix is accepted)")
    audio_base64: str | None = Field(None, description="WAV, MP3, FLAC or OGG, base64 (a data: URL prefix is accepted)")
    height: int = Field(720, ge=128, le=1280, multiple_of=16, description="Only without an image")
    width: int = Field(720, ge=128, le=1280, multiple_of=16, description="Only without an image")
    num_frames: int | None = Field(None, ge=1, description="Only without audio: the video length in frames")
    num_steps: int | None = Field(None, ge=1, le=100)
    guidance_scale: float | None = Field(None, ge=1, le=20)
    audio_scale: float | None = Field(None, ge=1, le=20, description="Default: guidance_scale")
    overlap_frame: int | None = Field(None, ge=1, description="1 + 4n, smaller than a segment")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Default: random")
    tea_cache_threshold: float | None = Field(None, ge=0, description="TeaCache; 0 = off. Default: the model config's")

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be empty or only whitespace")
        return value

    @field_validator("overlap_frame")
    @classmethod
    def _overlap_form(cls, value: int | None) -> int | None:
        if value is not None and value % 4 != 1:
            raise ValueError("must be of the form 1 + 4n (1, 5, 9, 13, ...)")
        return value


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
    tea_cache_threshold: float = 0.0


def check_content_type(content_type: str | None) -> None:
    """415 unless the body is declared as JSON."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type not in JSON_CONTENT_TYPES:
        raise RequestError(
            "unsupported_media_type",
            f"send the request as Content-Type: application/json (got {content_type or 'none'})",
            status=415,
        )


def parse_request(body: bytes, limits: RequestLimits, defaults: GenerationDefaults, fps: int = 25) -> GenerateRequest:
    """Validate a JSON body and decode its media. Raises RequestError (400/413/422) naming the bad field."""
    if len(body) > limits.max_body_bytes:
        raise body_too_large(len(body), limits)
    fields = _validate_fields(_parse_json_object(body))
    if len(fields.prompt) > limits.max_prompt_chars:
        raise RequestError(
            "invalid_field", f"prompt has {len(fields.prompt)} characters; the limit is {limits.max_prompt_chars}", "prompt"
        )
    if fields.audio_base64 is not None and fields.num_frames is not None:
        raise RequestError(
            "invalid_field", "num_frames applies only without audio: the audio sets the video length", "num_frames"
        )
    max_frames = int(limits.max_audio_s * fps) + 1
    if fields.num_frames is not None and fields.num_frames > max_frames:
        raise RequestError(
            "invalid_field", f"num_frames is {fields.num_frames}; the limit is {max_frames} ({limits.max_audio_s:.0f} s)", "num_frames"
        )
    if fields.tea_cache_threshold is not None and fields.tea_cache_threshold > limits.max_tea_cache_threshold:
        raise RequestError(
            "invalid_field",
            f"tea_cache_threshold is {fields.tea_cache_threshold}; the limit is {limits.max_tea_cache_threshold}",
            "tea_cache_threshold",
        )
    image = None
    if fields.image_base64 is not None:
        image = decode_image(decode_base64(fields.image_base64, "image_base64"), limits.max_image_side)
    audio = None
    if fields.audio_base64 is not None:
        audio = decode_audio(decode_base64(fields.audio_base64, "audio_base64"), limits.max_audio_s, fps)
    return GenerateRequest(
        prompt=fields.prompt,
        negative_prompt=defaults.negative_prompt if fields.negative_prompt is None else fields.negative_prompt,
        image=image,
        audio=audio,
        height=fields.height,
        width=fields.width,
        num_frames=(defaults.num_frames if fields.num_frames is None else fields.num_frames) if audio is None else None,
        num_steps=defaults.num_steps if fields.num_steps is None else fields.num_steps,
        guidance_scale=defaults.guidance_scale if fields.guidance_scale is None else float(fields.guidance_scale),
        audio_scale=defaults.audio_scale if fields.audio_scale is None else float(fields.audio_scale),
        overlap_frame=defaults.overlap_frame if fields.overlap_frame is None else fields.overlap_frame,
        seed=random.randint(0, MAX_SEED) if fields.seed is None else fields.seed,
        tea_cache_threshold=(
            defaults.tea_cache_threshold if fields.tea_cache_threshold is None else float(fields.tea_cache_threshold)
        ),
    )


def body_too_large(size: int, limits: RequestLimits) -> RequestError:
    return RequestError(
        "body_too_large",
        f"the request body is {size} bytes; the limit is {limits.max_body_bytes} bytes. Send shorter audio or a smaller image",
        status=413,
    )


def decode_base64(value: str, field: str) -> bytes:
    """Standard base64 (whitespace and a data: URL prefix allowed) -> bytes, or RequestError naming `field`."""
    value = DATA_URL.sub("", value.strip(), count=1)
    try:
        data = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError("invalid_base64", f"{field} is not valid base64 ({exc})", field)
    if not data:
        raise RequestError("invalid_base64", f"{field} is empty", field)
    return data


def _parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError("invalid_json", f"the body is not valid JSON ({exc})", status=400)
    if not isinstance(data, dict):
        raise RequestError(
            "invalid_json", f"the body must be a JSON object with a prompt, not a JSON {type(data).__name__}", status=400
        )
    return data


def _validate_fields(data: dict[str, Any]) -> GenerateFields:
    try:
        return GenerateFields.model_validate(data)
    except ValidationError as exc:
        raise _field_error(exc.errors(include_url=False)[0], len(exc.errors()))


def _field_error(error: dict[str, Any], count: int) -> RequestError:
    field = ".".join(str(part) for part in error["loc"]) or None
    more = f" (and {count - 1} more problem{'s' if count > 2 else ''})" if count > 1 else ""
    if error["type"] == "extra_forbidden":
        allowed = ", ".join(GenerateFields.model_fields)
        return RequestError("unknown_field", f"unknown field '{field}'; the fields are: {allowed}{more}", field)
    if error["type"] == "missing":
        return RequestError("missing_field", f"'{field}' is required{more}", field)
    got = error.get("input")
    shown = repr(got) if not isinstance(got, str) or len(got) <= 40 else repr(got[:40] + "...")
    message = error["msg"][0].lower() + error["msg"][1:]
    message = message.removeprefix("value error, ")
    return RequestError("invalid_field", f"{field}: {message} (got {shown}){more}", field)
