"""AvatarService: one request's way through the ingress. Read and validate at the door, plan, and hand the
job to the StreamStore, which runs it on the generators of the request's profile and keeps its log; wait briefly for a generator to take it (the last
moment for a real 4xx/503); then relay the log's events from any point, so that a client resumes through
any ingress replica. Every later failure is the stream's error event."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

import ray
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from deployments.body import read_body
from deployments.errors import ServiceError, as_service_error, error_response
from deployments.events import GenerationJob
from deployments.framing import Framing
from deployments.metrics import IngressMetrics
from deployments.options import StreamOptions
from deployments.profiles import ProfileRouter, combined_status
from deployments.ranges import ranged_response
from deployments.runs import TERMINAL, StreamEvent
from deployments.ticker import TIMEOUT, Ticker
from model.errors import NotReadyError, RequestError
from model.media import concatenate_segments
from model.plan import plan_segments
from model.request import RequestLimits, check_content_type, parse_request

logger = logging.getLogger("ray.serve")
REQUEST_ID = re.compile(r"^[\w.:-]{1,128}$")
ADMISSION_MARGIN_S = 5.0  # /generate waits this much past max_queue_wait_s, for the store's queue_timeout


def _own_actor() -> Any:
    """This replica's actor handle (None outside an actor, e.g. in local testing mode)."""
    try:
        return ray.get_runtime_context().current_actor
    except Exception:
        return None


def key_owner(http_request: Request, auth_enabled: bool) -> str | None:
    """The digest of the request's API key when authentication is on: only that key reaches the request later."""
    if not auth_enabled:
        return None
    key = http_request.headers.get("authorization", "").partition(" ")[2].strip()
    return hashlib.sha256(key.encode()).hexdigest()


def resume_point(http_request: Request, request_id: str) -> int | ServiceError:
    """The last seq the client has (-1: none), from `?after=` or else the SSE `Last-Event-ID` (`<id>:<seq>`)."""
    after = http_request.query_params.get("after")
    if after is None:
        last_id = http_request.headers.get("last-event-id")
        if not last_id:
            return -1
        named, _, after = last_id.rpartition(":")
        if named != request_id:
            return ServiceError(400, "invalid_last_event_id", f"Last-Event-ID must be '{request_id}:<seq>' (got {last_id[:160]!r})")
    if not re.fullmatch(r"-?\d{1,9}", after) or int(after) < -1:
        return ServiceError(400, "invalid_after", f"after must be a sequence number, -1 for the whole stream (got {after[:40]!r})")
    return int(after)


class AvatarService:
    """The ingress's logic, behind routes of a few lines."""

    def __init__(
        self,
        profiles: ProfileRouter,
        store: DeploymentHandle,
        limits: RequestLimits,
        options: StreamOptions,
        auth_enabled: bool = False,
    ) -> None:
        self._store = store
        self._store_events = store.options(stream=True, method_name="events")
        self.profiles = profiles
        self._caller = _own_actor()
        self._auth_enabled = auth_enabled
        self.limits = limits
        self.options = options
        self.metrics = IngressMetrics()

    # -- routes ----------------------------------------------------------------------------------------------

    async def health(self) -> JSONResponse:
        """The default profile's backend and state at the top level (status: every profile's), each profile's in `profiles`."""
        states, queued = await asyncio.gather(self.profiles.all_replicas(), self._queued())
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
            "queued": queued,
            "defaults": asdict(default.config.generation),
            "limits": asdict(self.limits),
            "default_profile": default.name,
            "profiles": self.profiles.describe(states),
        }
        headers = {} if ready else {"Retry-After": str(self.options.retry_after_s)}
        return JSONResponse(body, status_code=200 if ready else 503, headers=headers)

    async def _queued(self) -> int | None:
        """Requests no generator took yet, from the store; None if it does not answer in time (restarting)."""
        try:
            return await asyncio.wait_for(self._store.waiting.remote(), self.options.health_timeout_s / 2)
        except Exception:
            return None

    async def stream(self, http_request: Request, framing: Framing, route: str) -> Response:
        submitted = await self._submit_or_error(http_request, self.options.queued_after_s, detached=False)
        if isinstance(submitted, Response):
            return submitted
        request_id, arrived = submitted
        owner = key_owner(http_request, self._auth_enabled)
        return self._streaming(self._relay(http_request, request_id, -1, owner, framing, route, arrived), framing)

    async def resume(self, http_request: Request, request_id: str, framing: Framing, route: str) -> Response:
        """The stream of an earlier request from after the client's last event: replay, then live."""
        owner = key_owner(http_request, self._auth_enabled)
        after = resume_point(http_request, request_id)
        found = await self._lookup(request_id, owner)
        if isinstance(found, ServiceError):
            return error_response(found)
        if isinstance(after, ServiceError):
            return error_response(after)
        return self._streaming(self._relay(http_request, request_id, after, owner, framing, route, time.monotonic()), framing)

    async def whole_video(self, http_request: Request) -> Response:
        submitted = await self._submit_or_error(http_request, self.options.max_queue_wait_s + ADMISSION_MARGIN_S, detached=False)
        if isinstance(submitted, Response):
            return submitted
        request_id, _ = submitted
        owner = key_owner(http_request, self._auth_enabled)
        stream = self._store_events.remote(request_id, -1, owner, self._caller)
        try:
            events = [event async for event in stream]
            last = events[-1] if events else None
            if last is None or last.kind != "complete":
                error = last.error if last is not None and last.error is not None else ServiceError(503, "unavailable", "the request ended early; retry")
                self.metrics.requests.inc(tags={"route": "generate", "outcome": "failed"})
                return error_response(error)
            video = await asyncio.to_thread(concatenate_segments, [event.mp4 for event in events if event.mp4])
        except Exception as error:
            self.metrics.requests.inc(tags={"route": "generate", "outcome": "failed"})
            return error_response(as_service_error(error, self.options.retry_after_s, request_id))
        finally:
            stream.cancel()
        self.metrics.requests.inc(tags={"route": "generate", "outcome": "completed"})
        summary = {key: value for key, value in last.payload.items() if key != "message"}
        return JSONResponse({"success": True, "request_id": request_id, "video_base64": base64.b64encode(video).decode(), **summary})

    async def submit_job(self, http_request: Request) -> Response:
        """202 with the request id and where to follow it; the generation runs whoever is connected."""
        submitted = await self._submit_or_error(http_request, self.options.queued_after_s, detached=True)
        if isinstance(submitted, Response):
            return submitted
        request_id, _ = submitted
        base = http_request.scope.get("root_path", "").rstrip("/")
        urls = {
            "stream_url": f"{base}/streams/{request_id}",
            "status_url": f"{base}/jobs/{request_id}",
            "video_url": f"{base}/videos/{request_id}",
        }
        self.metrics.requests.inc(tags={"route": "jobs", "outcome": "submitted"})
        return JSONResponse({"success": True, "request_id": request_id, **urls}, status_code=202, headers={"Location": urls["status_url"]})

    async def job_status(self, http_request: Request, request_id: str) -> Response:
        found = await self._call(self._store.status, request_id, http_request)
        return found if isinstance(found, Response) else JSONResponse({"success": True, **found})

    async def cancel(self, http_request: Request, request_id: str) -> Response:
        found = await self._call(self._store.cancel, request_id, http_request)
        return found if isinstance(found, Response) else JSONResponse({"success": True, **found})

    async def video(self, http_request: Request, request_id: str) -> Response:
        found = await self._call(self._store.video, request_id, http_request)
        return found if isinstance(found, Response) else ranged_response(found, http_request.headers.get("range"), "video/mp4")

    # -- admission -------------------------------------------------------------------------------------------

    async def _submit_or_error(self, http_request: Request, accept_within_s: float, detached: bool) -> tuple[str, float] | Response:
        """(request id, arrival) once the store runs the request (taken by a generator, or still queued), or
        the JSON error response."""
        request_id = http_request.headers.get("x-request-id") or uuid.uuid4().hex  # Serve sets one on every request
        arrived = time.monotonic()
        try:
            job = await self._job(http_request, request_id)
            owner = key_owner(http_request, self._auth_enabled)
            refused = await self._store.submit.remote(job, owner, detached, accept_within_s)
        except Exception as error:
            refused = as_service_error(error, self.options.retry_after_s, request_id)
        if refused is None:
            return request_id, arrived
        self.metrics.rejected.inc(tags={"code": refused.code})
        logger.info("request %s refused: %s %s", request_id, refused.status, refused.message)
        return error_response(refused)

    async def _job(self, http_request: Request, request_id: str) -> GenerationJob:
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
        return GenerationJob(request_id=request_id, request=request, plan=plan_segments(request, config.planning))

    async def _lookup(self, request_id: str, owner: str | None) -> ServiceError | None:
        if not REQUEST_ID.match(request_id):
            return ServiceError(404, "unknown_request", "no request with such an id is known to this service")
        return await self._store.lookup.remote(request_id, owner)

    async def _call(self, method: Any, request_id: str, http_request: Request) -> Any:
        """A store method on one request, or the JSON error response (404 for an unknown or evicted id)."""
        if not REQUEST_ID.match(request_id):
            return error_response(ServiceError(404, "unknown_request", "no request with such an id is known to this service"))
        try:
            found = await method.remote(request_id, key_owner(http_request, self._auth_enabled))
        except Exception as error:
            return error_response(as_service_error(error, self.options.retry_after_s, request_id))
        return error_response(found) if isinstance(found, ServiceError) else found

    # -- streaming -------------------------------------------------------------------------------------------

    @staticmethod
    def _streaming(chunks: AsyncIterator[bytes], framing: Framing) -> StreamingResponse:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(chunks, media_type=framing.media_type, headers=headers)

    async def _relay(
        self, http_request: Request, request_id: str, after: int, owner: str | None, framing: Framing, route: str, arrived: float
    ) -> AsyncIterator[bytes]:
        """The request's events after `after` from the store, keep-alives between them; a failure of the
        store itself becomes the final error event."""
        resume_url = http_request.scope.get("root_path", "").rstrip("/") + f"/streams/{request_id}"
        stream = self._store_events.remote(request_id, after, owner, self._caller)
        items = Ticker(stream)
        outcome, first_segment = "failed", True
        try:
            while True:
                event = await items.next(self.options.keepalive_s)
                if event is TIMEOUT:
                    yield framing.keepalive
                    continue
                if event.kind == "start":
                    self.metrics.queue_wait.observe(time.monotonic() - arrived)
                elif event.kind == "segment":
                    if first_segment:
                        self.metrics.time_to_first_segment.observe(time.monotonic() - arrived, tags={"route": route})
                        first_segment = False
                    self.metrics.segments_streamed.inc(tags={"route": route})
                yield framing.event(event.kind, self._payload(event, resume_url), request_id, event.seq)
                if event.kind in TERMINAL:
                    outcome = "completed" if event.kind == "complete" else "failed"
                    return
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except Exception as error:  # StopAsyncIteration too: the store ended the log early
            service_error = as_service_error(error, self.options.retry_after_s, request_id)
            yield framing.event("error", {"error": service_error.to_dict()}, request_id, None)
        finally:
            items.close()
            stream.cancel()
            self.metrics.requests.inc(tags={"route": route, "outcome": outcome})

    @staticmethod
    def _payload(event: StreamEvent, resume_url: str) -> dict[str, Any]:
        if event.kind == "segment" and event.mp4 is not None:
            return {**event.payload, "segment_base64": base64.b64encode(event.mp4).decode()}
        if event.kind in ("start", "queued"):
            return {**event.payload, "resume_url": resume_url}
        return event.payload
