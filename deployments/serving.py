"""AvatarService: one request's way through the ingress. Validate at the door, plan, open the generator's
stream and await its Accepted item (the last moment for a real 4xx/503), then frame the events."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from deployments.errors import as_service_error, error_response
from deployments.events import Accepted, EncodedSegment, GenerationJob, Progress
from deployments.framing import HEARTBEAT, Framing, with_heartbeat
from deployments.metrics import IngressMetrics
from model.config import ModelConfig
from model.media import concatenate_segments
from model.plan import SegmentPlan, plan_segments
from model.request import RequestLimits, body_too_large, check_content_type, parse_request

logger = logging.getLogger("ray.serve")
REQUEST_ID = re.compile(r"^[\w.:-]{1,128}$")


@dataclass(frozen=True)
class StreamOptions:
    """How the ingress talks to clients (serve_config.yaml `args.stream`)."""

    keepalive_s: float = 15.0  # SSE comment / empty NDJSON line while a segment computes
    retry_after_s: int = 5  # Retry-After of a 503
    health_timeout_s: float = 2.0  # how long /health waits for a busy generator before using its last answer


@dataclass(frozen=True, eq=False)
class Started:
    """An admitted request: its job, the open generator stream and when it arrived."""

    job: GenerationJob
    stream: DeploymentResponseGenerator
    accepted: Accepted
    arrived: float

    @property
    def plan(self) -> SegmentPlan:
        return self.job.plan


class AvatarService:
    """The ingress's logic, behind routes of a few lines."""

    def __init__(self, generator: DeploymentHandle, config: ModelConfig, limits: RequestLimits, options: StreamOptions) -> None:
        self._generator = generator
        self._stream_handle = generator.options(stream=True, method_name="generate")
        self.config = config
        self.limits = limits
        self.options = options
        self.metrics = IngressMetrics()
        self._last_backend_info: dict[str, Any] = {"backend": config.backend, "state": "unknown"}

    # -- routes ----------------------------------------------------------------------------------------------

    async def health(self) -> JSONResponse:
        info = await self._backend_info()
        ready = info.get("state") == "ready"
        status = "healthy" if ready else ("loading" if info.get("state") in ("loading", "unknown") else "unhealthy")
        body = {
            "status": status,
            "model_loaded": ready,
            "streaming_supported": True,
            **info,
            "defaults": asdict(self.config.generation),
            "limits": asdict(self.limits),
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    async def stream(self, http_request: Request, framing: Framing, route: str) -> Response:
        started = await self._admit_or_error(http_request)
        if isinstance(started, Response):
            return started
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Request-ID": started.job.request_id}
        return StreamingResponse(self._framed(started, framing, route), media_type=framing.media_type, headers=headers)

    async def whole_video(self, http_request: Request) -> Response:
        started = await self._admit_or_error(http_request)
        if isinstance(started, Response):
            return started
        request_id = started.job.request_id
        try:
            segments = [event.mp4 async for event in started.stream if isinstance(event, EncodedSegment)]
            video = await asyncio.to_thread(concatenate_segments, segments)
        except Exception as error:
            self.metrics.requests.inc(tags={"route": "generate", "outcome": "failed"})
            return error_response(as_service_error(error, self.options.retry_after_s, request_id), request_id)
        finally:
            started.stream.cancel()
        self.metrics.requests.inc(tags={"route": "generate", "outcome": "completed"})
        body = {
            "success": True,
            "request_id": request_id,
            "video_base64": base64.b64encode(video).decode(),
            **self._summary(started),
        }
        return JSONResponse(body, headers={"X-Request-ID": request_id})

    # -- admission -------------------------------------------------------------------------------------------

    async def _admit_or_error(self, http_request: Request) -> Started | Response:
        request_id = self._request_id(http_request)
        try:
            return await self._admit(http_request, request_id)
        except Exception as error:
            service_error = as_service_error(error, self.options.retry_after_s, request_id)
            self.metrics.rejected.inc(tags={"code": service_error.code})
            logger.info("request %s refused: %s %s", request_id, service_error.status, service_error.message)
            return error_response(service_error, request_id)

    async def _admit(self, http_request: Request, request_id: str) -> Started:
        arrived = time.monotonic()
        check_content_type(http_request.headers.get("content-type"))
        raw = await self._read_body(http_request)
        request = await asyncio.to_thread(parse_request, raw, self.limits, self.config.generation, self.config.planning.fps)
        job = GenerationJob(request_id=request_id, request=request, plan=plan_segments(request, self.config.planning))
        stream = self._stream_handle.remote(job)
        try:
            accepted = await stream.__anext__()
        except BaseException:
            stream.cancel()
            raise
        self._last_backend_info = {**self._last_backend_info, **accepted.backend, "state": "ready"}
        return Started(job=job, stream=stream, accepted=accepted, arrived=arrived)

    async def _read_body(self, http_request: Request) -> bytes:
        declared = http_request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.limits.max_body_bytes:
            raise body_too_large(int(declared), self.limits)
        chunks, size = [], 0
        async for chunk in http_request.stream():
            size += len(chunk)
            if size > self.limits.max_body_bytes:
                raise body_too_large(size, self.limits)
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def _request_id(http_request: Request) -> str:
        given = http_request.headers.get("x-request-id", "")
        return given if REQUEST_ID.match(given) else uuid.uuid4().hex

    # -- streaming -------------------------------------------------------------------------------------------

    async def _framed(self, started: Started, framing: Framing, route: str) -> AsyncIterator[bytes]:
        """The stream's bytes; an error after the start becomes the final error event."""
        outcome, first_segment = "failed", True
        try:
            yield framing.start(self._start_payload(started))
            async for event in with_heartbeat(started.stream, self.options.keepalive_s):
                if event is HEARTBEAT:
                    yield framing.keepalive
                elif isinstance(event, Progress):
                    yield framing.progress(asdict(event))
                elif isinstance(event, EncodedSegment):
                    if first_segment:
                        self.metrics.time_to_first_segment.observe(time.monotonic() - started.arrived, tags={"route": route})
                        first_segment = False
                    yield framing.segment(self._segment_payload(event, started.plan))
                    self.metrics.segments_streamed.inc(tags={"route": route})
            yield framing.complete(self._summary(started) | {"message": "Video generation completed"})
            outcome = "completed"
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except Exception as error:
            yield framing.error(as_service_error(error, self.options.retry_after_s, started.job.request_id).to_dict())
        finally:
            started.stream.cancel()
            self.metrics.requests.inc(tags={"route": route, "outcome": outcome})

    def _start_payload(self, started: Started) -> dict[str, Any]:
        plan = started.plan
        return {
            "message": "Video generation started",
            "request_id": started.job.request_id,
            **self._video_fields(started),
            "fps": plan.fps,
            "width": plan.width,
            "height": plan.height,
            "num_steps": started.job.request.num_steps,
            "backend": started.accepted.backend.get("backend"),
        }

    @staticmethod
    def _segment_payload(segment: EncodedSegment, plan: SegmentPlan) -> dict[str, Any]:
        return {
            "segment_index": segment.index,
            "total_segments": segment.total,
            "segment_base64": base64.b64encode(segment.mp4).decode(),
            "is_final": segment.is_final,
            "start_frame": segment.start_frame,
            "num_frames": segment.num_frames,
            "fps": plan.fps,
            "mime_type": "video/mp4",
            "codecs": segment.codecs,
        }

    @staticmethod
    def _video_fields(started: Started) -> dict[str, Any]:
        """What the start, complete and whole-video answers all say about the video."""
        plan = started.plan
        return {
            "total_segments": plan.num_segments,
            "num_frames": plan.num_frames,
            "duration_s": round(plan.duration_s, 3),
            "lead_in_s": plan.lead_in_s,
            "seed": started.job.request.seed,
        }

    def _summary(self, started: Started) -> dict[str, Any]:
        return self._video_fields(started) | {"elapsed_s": round(time.monotonic() - started.arrived, 3)}

    # -- health ----------------------------------------------------------------------------------------------

    async def _backend_info(self) -> dict[str, Any]:
        """Ask a generator replica; if they are all busy with long streams, use the last answer."""
        response = self._generator.describe.remote()
        try:
            self._last_backend_info = await asyncio.wait_for(response, self.options.health_timeout_s)
            return self._last_backend_info
        except Exception:  # busy (timed out or queue full) or unavailable
            response.cancel()
            return {**self._last_backend_info, "busy": True}
