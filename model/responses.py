"""The service's answers as typed models, for OpenAPI and for checking the wire: the stream events (SSE
`data:` objects and NDJSON lines), the whole video, errors and /health. The fields listed are guaranteed;
an answer may carry more (clients ignore fields they do not know)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorDetail(_Answer):
    code: str = Field(description="snake_case, e.g. invalid_field, image_too_large, overloaded")
    message: str = Field(description="What is wrong and how to fix it")
    field: str | None = Field(None, description="The request field at fault, if one is")


class ErrorResponse(_Answer):
    """Any refused request (400, 401, 404, 408, 413, 415, 422, 503) or a failure before the stream opened."""

    success: Literal[False]
    error: ErrorDetail


class VideoSummary(_Answer):
    total_segments: int
    num_frames: int = Field(description="Frames of the whole video: one reference frame plus one per audio frame")
    duration_s: float
    lead_in_s: float = Field(description="Silence before the speech (0 without audio)")
    seed: int
    profile: str = Field(description="The profile that generates the video")


class StartEvent(VideoSummary):
    """SSE `start`: the request is admitted and its plan is known."""

    message: str
    request_id: str
    fps: int
    width: int
    height: int
    num_steps: int
    backend: str | None


class ProgressEvent(_Answer):
    """SSE `progress`: one denoising step of a segment done."""

    segment_index: int
    step: int
    num_steps: int


class SegmentEvent(_Answer):
    """SSE `segment`: one segment, a complete fragmented MP4 (H.264 + AAC) that plays on its own."""

    segment_index: int
    total_segments: int
    segment_base64: str
    is_final: bool
    start_frame: int = Field(description="The first output frame this segment holds")
    num_frames: int
    fps: int
    mime_type: Literal["video/mp4"]
    codecs: str = Field(description="RFC 6381 codecs for Media Source Extensions, e.g. avc1.64001f,mp4a.40.2")


class CompleteEvent(VideoSummary):
    """SSE `complete`: every segment was sent."""

    message: str
    elapsed_s: float


class ErrorEvent(_Answer):
    """SSE `error`: the stream failed after it started; it ends here."""

    error: ErrorDetail


class QueuedEvent(_Answer):
    """SSE `queued`: the request waits for a generator; `start` follows when one takes it."""

    request_id: str | None = None


class NdjsonStarted(StartEvent):
    status: Literal["started"]
    streaming: Literal[True]


class NdjsonQueued(QueuedEvent):
    status: Literal["queued"]


class NdjsonProgress(ProgressEvent):
    status: Literal["progress"]


class NdjsonSegment(SegmentEvent):
    status: Literal["segment"]


class NdjsonCompleted(CompleteEvent):
    status: Literal["completed"]
    final: Literal[True]


class NdjsonError(ErrorEvent):
    status: Literal["error"]
    final: Literal[True]


NdjsonLine = Annotated[
    NdjsonQueued | NdjsonStarted | NdjsonProgress | NdjsonSegment | NdjsonCompleted | NdjsonError, Field(discriminator="status")
]
SSE_EVENTS: dict[str, type[BaseModel]] = {
    "queued": QueuedEvent,
    "start": StartEvent,
    "progress": ProgressEvent,
    "segment": SegmentEvent,
    "complete": CompleteEvent,
    "error": ErrorEvent,
}


class VideoResponse(VideoSummary):
    """POST /generate: the whole video once every segment is done."""

    success: Literal[True]
    request_id: str
    video_base64: str = Field(description="One MP4 (H.264 + AAC), the segments joined")
    elapsed_s: float


class ProfileHealth(_Answer):
    """One profile in GET /health: the state of its generators and its model config's request defaults."""

    status: str = Field(description="healthy, loading or unhealthy")
    model_loaded: bool
    backend: str
    defaults: dict[str, Any]


class HealthResponse(_Answer):
    """GET /health: 200 when every profile has a generator that can take requests, else 503 with the reason.
    The top-level backend fields describe the default profile."""

    status: str = Field(description="healthy (every profile), loading or unhealthy (one profile failed)")
    model_loaded: bool
    streaming_supported: bool
    backend: str
    default_profile: str = Field(description="The profile of requests that name none")
    profiles: dict[str, ProfileHealth] = Field(description="Every profile a request may name in `profile`")


def inline_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema with its `$defs` references replaced by the definitions, so it stands alone anywhere in
    an OpenAPI document (a discriminator's mapping names definitions, so it goes; each branch's `status`
    constant says the same)."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items() if key != "discriminator"}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)


def schema_of(model: Any) -> dict[str, Any]:
    """The standalone JSON Schema of a model or an annotated union of models."""
    return inline_schema(TypeAdapter(model).json_schema())


def openapi_responses(stream_media_type: str | None) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` for a generate route: its 200 (an SSE or NDJSON stream, or the whole video when
    `stream_media_type` is None) and the JSON errors."""
    if stream_media_type == "text/event-stream":
        events = {"oneOf": [schema_of(model) for model in SSE_EVENTS.values()]}
        ok = {"description": f"Events named {', '.join(SSE_EVENTS)}; each `data:` is one of these objects", "content": {stream_media_type: {"schema": events}}}
    elif stream_media_type is not None:
        ok = {"description": "One JSON object per line, by `status`", "content": {stream_media_type: {"schema": schema_of(NdjsonLine)}}}
    else:
        ok = {"description": "The whole video", "content": {"application/json": {"schema": schema_of(VideoResponse)}}}
    error = {"content": {"application/json": {"schema": schema_of(ErrorResponse)}}}
    reasons = {400: "Not JSON, or not an object", 408: "The body was not received in time", 413: "Body too large", 415: "Not application/json", 422: "An invalid field", 503: "Busy or not ready"}
    return {200: ok} | {status: {"description": reason, **error} for status, reason in reasons.items()}
