"""AvatarService: one request's way through the ingress. Read and validate at the door, plan, submit to the
generators of the request's profile and wait briefly for one to accept (the last moment for a real 4xx/503); a request still waiting
then streams `queued` until a generator takes it, and every later failure is the stream's error event."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any

import ray
from ray.serve.handle import DeploymentResponseGenerator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from deployments.body import read_body
from deployments.errors import QueueTimeout, ReplicaStalled, as_service_error, error_response
from deployments.events import Accepted, EncodedSegment, GenerationJob, Progress
from deployments.framing import Framing
from deployments.metrics import IngressMetrics
from deployments.options import StreamOptions
from deployments.profiles import ProfileRouter, combined_status
from deployments.ticker import TIMEOUT, Ticker
from model.errors import NotReadyError, RequestError
from model.media import concatenate_segments
from model.plan import SegmentPlan, plan_segments
from model.request import RequestLimits, check_content_type, parse_request

logger = logging.getLogger("ray.serve")
REQUEST_ID = re.compile(r"^[\w.:-]{1,128}$")


@dataclass(eq=False)
class Submission:
    """A validated request handed to the generators: its job, its open stream, and the generator's Accepted
    once one took it."""

    job: GenerationJob
    stream: DeploymentResponseGenerator
    arrived: float
    items: Ticker = field(init=False)
    accepted: Accepted | None = None

    def __post_init__(self) -> None:
        self.items = Ticker(self.stream)

    @property
    def plan(self) -> SegmentPlan:
        return self.job.plan

    def close(self) -> None:
        self.items.close()
        self.stream.cancel()


def _own_actor() -> Any:
    """This replica's actor handle (None outside an actor, e.g. in local testing mode)."""
    try:
        return ray.get_runtime_context().current_actor
    except Exception:
        return None


class AvatarService:
    """The ingress's logic, behind routes of a few lines."""

    def __init__(self, profiles: ProfileRouter, limits: RequestLimits, options: StreamOptions) -> None:
        self.profiles = profiles
        self._caller = _own_actor()
        self.limits = limits
        self.options = options
        self.metrics = IngressMetrics()
        self._waiting: dict[str, str] = {}  # id -> profile of submitted requests no generator took yet, oldest first

    # -- routes ----------------------------------------------------------------------------------------------

    async def health(self) -> JSONResponse:
        """The default profile's backend and state at the top level (status: every profile's), each profile's in `profiles`."""
        states = await self.profiles.all_replicas()
        default = self.profiles.default
        replicas = states[default.name]
        ready = all(state.ready for state in states.values())
        body = {
            "status": combined_status(list(states.values())),
            "model_loaded": ready,
            "streaming_supported": True,
            "backend": default.config.backend,
            "config": default.config.source,
            **replicas.backend,
            "generators": replicas.to_dict(),
            "error": replicas.error or next((f"profile {name}: {s.error}" for name, s in states.items() if s.error), None),
            "queued": len(self._waiting),
            "defaults": asdict(default.config.generation),
            "limits": asdict(self.limits),
            "default_profile": default.name,
            "profiles": self.profiles.describe(states),
        }
        headers = {} if ready else {"Retry-After": str(self.options.retry_after_s)}
        return JSONResponse(body, status_code=200 if ready else 503, headers=headers)

    async def stream(self, http_request: Request, framing: Framing, route: str) -> Response:
        submission = await self._submit_or_error(http_request, self.options.queued_after_s)
        if isinstance(submission, Response):
            return submission
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(self._framed(submission, framing, route), media_type=framing.media_type, headers=headers)

    async def whole_video(self, http_request: Request) -> Response:
        submission = await self._submit_or_error(http_request, self.options.max_queue_wait_s)
        if isinstance(submission, Response):
            return submission
        request_id = submission.job.request_id
        try:
            segments = [event.mp4 async for event in self._events(submission) if isinstance(event, EncodedSegment)]
            video = await asyncio.to_thread(concatenate_segments, segments)
        except Exception as error:
            self.metrics.requests.inc(tags={"route": "generate", "outcome": "failed"})
            return error_response(as_service_error(error, self.options.retry_after_s, request_id))
        finally:
            submission.close()
        self.metrics.requests.inc(tags={"route": "generate", "outcome": "completed"})
        body = {
            "success": True,
            "request_id": request_id,
            "video_base64": base64.b64encode(video).decode(),
            **self._summary(submission),
        }
        return JSONResponse(body)

    # -- admission -------------------------------------------------------------------------------------------

    async def _submit_or_error(self, http_request: Request, accept_within_s: float) -> Submission | Response:
        """A submission (accepted, or for streams possibly still queued), or the JSON error response."""
        request_id = http_request.headers.get("x-request-id") or uuid.uuid4().hex  # Serve sets one on every request
        try:
            return await self._submit(http_request, request_id, accept_within_s)
        except Exception as error:
            service_error = as_service_error(error, self.options.retry_after_s, request_id)
            self.metrics.rejected.inc(tags={"code": service_error.code})
            logger.info("request %s refused: %s %s", request_id, service_error.status, service_error.message)
            return error_response(service_error)

    async def _submit(self, http_request: Request, request_id: str, accept_within_s: float) -> Submission:
        arrived = time.monotonic()
        if not REQUEST_ID.match(request_id):
            raise RequestError("invalid_request_id", "X-Request-ID must be 1 to 128 letters, digits, '.', ':', '_' or '-'", status=400)
        check_content_type(http_request.headers.get("content-type"))
        options = self.options
        raw = await read_body(http_request, self.limits, options.body_timeout_s, options.drain_bytes)
        request = await asyncio.to_thread(parse_request, raw, self.limits, profiles=self.profiles.request_profiles)
        config = self.profiles.config(request.profile)
        replicas = await self.profiles.replicas(request.profile)
        if replicas.failed:  # a request would wait for a replica that will not come
            raise NotReadyError(f"the {config.backend} backend of profile {request.profile} failed to load: {replicas.error}", 60)
        plan = plan_segments(request, config.planning)
        job = GenerationJob(request_id=request_id, request=request, plan=plan, caller=self._caller)
        submission = Submission(job=job, stream=self.profiles.stream(request.profile, job), arrived=arrived)
        self._waiting[request_id] = request.profile
        try:
            await self._take_accepted(submission, accept_within_s)
        except BaseException:
            self._waiting.pop(request_id, None)
            submission.close()
            raise
        if submission.accepted is None and accept_within_s >= options.max_queue_wait_s:
            self._waiting.pop(request_id, None)
            submission.close()
            raise QueueTimeout(options.max_queue_wait_s)
        return submission

    async def _take_accepted(self, submission: Submission, within_s: float) -> None:
        """Wait up to `within_s` for a generator to accept; on acceptance the submission leaves the queue."""
        item = await submission.items.next(within_s)
        if item is TIMEOUT:
            return
        submission.accepted = item
        self._waiting.pop(submission.job.request_id, None)
        self.metrics.queue_wait.observe(time.monotonic() - submission.arrived)

    def _ahead(self, request_id: str) -> int:
        """Requests for the same profile this ingress submitted earlier that no generator took yet (other ingress
        replicas' unknown)."""
        profile, ahead = self._waiting.get(request_id), 0
        for waiting, waiting_for in self._waiting.items():
            if waiting == request_id:
                return ahead
            ahead += waiting_for == profile
        return 0

    # -- streaming -------------------------------------------------------------------------------------------

    async def _framed(self, submission: Submission, framing: Framing, route: str) -> AsyncIterator[bytes]:
        """The stream's bytes; an error after the response started becomes the final error event."""
        outcome, first_segment = "failed", True
        try:
            if submission.accepted is None:
                async for chunk in self._queued(submission, framing):
                    yield chunk
            yield framing.start(self._start_payload(submission))
            async for event in self._events(submission):
                if event is TIMEOUT:
                    yield framing.keepalive
                elif isinstance(event, Progress):
                    yield framing.progress(asdict(event))
                elif isinstance(event, EncodedSegment):
                    if first_segment:
                        self.metrics.time_to_first_segment.observe(time.monotonic() - submission.arrived, tags={"route": route})
                        first_segment = False
                    yield framing.segment(self._segment_payload(event, submission.plan))
                    self.metrics.segments_streamed.inc(tags={"route": route})
            yield framing.complete(self._summary(submission) | {"message": "Video generation completed"})
            outcome = "completed"
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except Exception as error:
            yield framing.error(as_service_error(error, self.options.retry_after_s, submission.job.request_id).to_dict())
        finally:
            self._waiting.pop(submission.job.request_id, None)
            submission.close()
            self.metrics.requests.inc(tags={"route": route, "outcome": outcome})

    async def _queued(self, submission: Submission, framing: Framing) -> AsyncIterator[bytes]:
        """`queued` at once and whenever the number ahead changes, keep-alives in between, until a generator
        accepts; raises QueueTimeout after max_queue_wait_s."""
        request_id = submission.job.request_id
        ahead = self._ahead(request_id)
        yield framing.queued(self._queued_payload(request_id, ahead))
        deadline = submission.arrived + self.options.max_queue_wait_s
        while submission.accepted is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QueueTimeout(self.options.max_queue_wait_s)
            await self._take_accepted(submission, min(self.options.keepalive_s, remaining))
            if submission.accepted is None:
                now_ahead = self._ahead(request_id)
                yield framing.queued(self._queued_payload(request_id, now_ahead)) if now_ahead != ahead else framing.keepalive
                ahead = now_ahead

    @staticmethod
    def _queued_payload(request_id: str, ahead: int) -> dict[str, Any]:
        return {
            "message": "Waiting for a free generator",
            "request_id": request_id,
            "ahead": ahead,
            "ahead_scope": "ingress",  # requests queued through other ingress replicas are not counted
        }

    async def _events(self, submission: Submission) -> AsyncIterator[Progress | EncodedSegment | object]:
        """The generator's events after Accepted, with TIMEOUT after each `keepalive_s` without one; raises
        ReplicaStalled when none came for `stall_timeout_s`."""
        options = self.options
        last = time.monotonic()
        while True:
            wait_s = min(options.keepalive_s, last + options.stall_timeout_s - time.monotonic())
            try:
                event = await submission.items.next(wait_s)
            except StopAsyncIteration:
                return
            if event is not TIMEOUT:
                last = time.monotonic()
            elif time.monotonic() - last >= options.stall_timeout_s:
                logger.warning("request %s: no progress for %.0f s; giving up on its generator", submission.job.request_id, options.stall_timeout_s)
                raise ReplicaStalled(options.stall_timeout_s)
            yield event

    def _start_payload(self, submission: Submission) -> dict[str, Any]:
        plan = submission.plan
        return {
            "message": "Video generation started",
            "request_id": submission.job.request_id,
            **self._video_fields(submission),
            "fps": plan.fps,
            "width": plan.width,
            "height": plan.height,
            "num_steps": submission.job.request.num_steps,
            "backend": submission.accepted.backend.get("backend") if submission.accepted else None,
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
    def _video_fields(submission: Submission) -> dict[str, Any]:
        """What the start, complete and whole-video answers all say about the video."""
        plan = submission.plan
        return {
            "total_segments": plan.num_segments,
            "num_frames": plan.num_frames,
            "duration_s": round(plan.duration_s, 3),
            "lead_in_s": plan.lead_in_s,
            "seed": submission.job.request.seed,
            "profile": submission.job.request.profile,
        }

    def _summary(self, submission: Submission) -> dict[str, Any]:
        return self._video_fields(submission) | {"elapsed_s": round(time.monotonic() - submission.arrived, 3)}
