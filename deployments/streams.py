"""StreamStore: the deployment that runs every request's generation and keeps its replay log, so the
request outlives the connection and the ingress replica that accepted it.

The store (one replica) calls the generators; each ingress only reads a request's log through `events()`,
from any sequence number. A request whose last reader left is cancelled after `resume_grace_s` (a job,
`detached`, never is); `cancel()` stops one at once. Generator, queue and stall failures become the log's
final `error` event, and a failure before the request was taken by a generator is returned by `submit()`
(the ingress's last moment for a 503).

Serve ships this class by value, with copies of this module's globals: compare with sentinels through their
module (`ticker.TIMEOUT`), never a name imported from it.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

import ray
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle

from deployments.errors import QueueTimeout, ReplicaStalled, ServiceError, as_service_error
from deployments.events import Accepted, EncodedSegment, GenerationJob, Progress
from deployments.options import StreamOptions
from deployments.payloads import queued_payload, segment_payload, start_payload, video_fields
from deployments.runs import TERMINAL, Run, RunRegistry, StreamEvent
from deployments import ticker
from model.media import concatenate_segments

logger = logging.getLogger("ray.serve")


@serve.deployment(
    name="StreamStore", num_replicas=1, max_ongoing_requests=100000, graceful_shutdown_timeout_s=600, ray_actor_options={"num_cpus": 0}
)
class StreamStore:
    """Runs and logs requests; every method that names a request checks the caller's key digest."""

    def __init__(self, generators: dict[str, DeploymentHandle], options: StreamOptions = StreamOptions()) -> None:
        """`generators`: each profile's generator deployment, by profile name."""
        self._generate = {name: generator.options(stream=True, method_name="generate") for name, generator in generators.items()}
        self._options = options
        self._runs = RunRegistry(options.retention_s, options.max_retained_bytes)
        self._tasks: dict[str, asyncio.Task] = {}  # request id -> its generation
        self._grace: dict[str, asyncio.Task] = {}  # request id -> the timer that cancels it
        self._waiting: dict[str, str] = {}  # id -> profile of the requests no generator took yet, oldest first
        try:
            self._self = ray.get_runtime_context().current_actor
        except Exception:  # outside an actor (local testing mode)
            self._self = None

    # -- requests --------------------------------------------------------------------------------------------

    async def submit(self, job: GenerationJob, owner: str | None, detached: bool, accept_within_s: float) -> ServiceError | None:
        """Start the request; wait up to `accept_within_s` for a generator to take it. Returns the error if it
        failed meanwhile (the request is then forgotten), None once taken or still queued."""
        if job.request_id in self._runs:
            return ServiceError(409, "duplicate_request_id", f"a request with id {job.request_id} already exists; send another X-Request-ID")
        plan = job.plan
        run = Run(job.request_id, owner, detached, plan.num_segments, plan.num_segments * job.request.num_steps)
        self._runs.add(run)
        self._waiting[job.request_id] = job.request.profile
        job = dataclasses.replace(job, caller=self._self)  # the generator stops the job if this store dies
        # A fresh context: Serve must not count the generation as a child of this call (and cancel it with it).
        task = asyncio.get_running_loop().create_task(self._run(run, job), context=contextvars.Context())
        self._tasks[job.request_id] = task
        self._start_grace(run, max(self._options.resume_grace_s, self._options.orphan_check_s))  # until a reader comes
        deadline = time.monotonic() + accept_within_s
        while run.state == "queued" and (remaining := deadline - time.monotonic()) > 0:
            changed = run.changed()
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except asyncio.TimeoutError:
                break
        last = run.events[-1] if run.events else None
        if run.finished and last is not None and last.error is not None and run.accepted_at is None:
            self._runs.drop(job.request_id)
            return last.error
        return None

    async def lookup(self, request_id: str, owner: str | None) -> ServiceError | None:
        found = self._runs.get(request_id, owner)
        return found if isinstance(found, ServiceError) else None

    async def events(self, request_id: str, after: int, owner: str | None, caller: Any = None) -> AsyncIterator[StreamEvent]:
        """The log's events after `after`, then live ones until the final complete or error. Stops when the
        reader's ingress replica (`caller`) has died. While none reads it, a request runs on for the grace."""
        run = self._runs.get(request_id, owner)
        if isinstance(run, ServiceError):
            return
        run.readers += 1
        self._stop_grace(request_id)
        gone = asyncio.ensure_future(self._caller_gone(caller))
        try:
            cursor = after
            while True:
                changed = run.changed()
                for event in run.after(cursor):
                    yield event
                    cursor = event.seq
                    if event.kind in TERMINAL:
                        return
                waiting = asyncio.ensure_future(changed.wait())
                await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
                if gone.done():
                    waiting.cancel()
                    return
        finally:
            gone.cancel()
            run.readers -= 1
            if run.readers == 0 and not run.detached and not run.finished:
                self._start_grace(run, self._options.resume_grace_s)

    async def cancel(self, request_id: str, owner: str | None) -> ServiceError | dict[str, Any]:
        """Stop the request now (within one denoising step); a finished one is left as it is."""
        run = self._runs.get(request_id, owner)
        if isinstance(run, ServiceError):
            return run
        task = self._tasks.get(request_id)
        if task is not None and not run.finished:
            task.cancel()
            await asyncio.wait({task})
        return run.status()

    async def status(self, request_id: str, owner: str | None) -> ServiceError | dict[str, Any]:
        run = self._runs.get(request_id, owner)
        return run if isinstance(run, ServiceError) else run.status()

    async def video(self, request_id: str, owner: str | None) -> ServiceError | bytes:
        """The whole MP4 of a completed request (built once, then kept with it)."""
        run = self._runs.get(request_id, owner)
        if isinstance(run, ServiceError):
            return run
        if run.state != "completed":
            return ServiceError(409, "not_complete", f"request {request_id} is {run.state}; its video exists once it is completed")
        if run.video is None:
            run.video = await asyncio.to_thread(concatenate_segments, [event.mp4 for event in run.events if event.mp4])
            self._runs.evict()
        return run.video

    async def waiting(self) -> int:
        """Requests that no generator took yet."""
        return len(self._waiting)

    async def memory(self) -> dict[str, int]:
        """What the store holds: runs, live runs and bytes of finished ones (for operators and benchmarks)."""
        return {"runs": len(self._runs), "live": len(self._runs.live()), "retained_bytes": self._runs.retained_bytes()}

    # -- a request's generation ------------------------------------------------------------------------------

    async def _run(self, run: Run, job: GenerationJob) -> None:
        """Drive the generator's stream into the log; every ending is the log's final event."""
        stream = self._generate[job.request.profile].remote(job)
        items = ticker.Ticker(stream)
        try:
            accepted = await self._accepted(run, items)
            run.state, run.accepted_at = "running", time.monotonic()
            run.append("start", start_payload(job, accepted.backend))
            async for event in self._generator_events(job.request_id, items):
                if isinstance(event, Progress):
                    run.append("progress", asdict(event))
                elif isinstance(event, EncodedSegment):
                    run.append("segment", segment_payload(event, job.plan.fps), mp4=event.mp4)
            elapsed = round(time.time() - run.created, 3)
            run.append("complete", {"message": "Video generation completed", **video_fields(job), "elapsed_s": elapsed})
            run.finish("completed")
        except asyncio.CancelledError:
            error = ServiceError(409, "cancelled", f"request {job.request_id} was cancelled")
            run.append("error", {"error": error.to_dict()}, error=error)
            run.finish("cancelled")
            logger.info("request %s cancelled after %d segments", job.request_id, run.segments_done)
        except Exception as failure:
            error = as_service_error(failure, self._options.retry_after_s, job.request_id)
            run.append("error", {"error": error.to_dict()}, error=error)
            run.finish("failed")
        finally:
            self._waiting.pop(job.request_id, None)
            items.close()
            stream.cancel()
            self._tasks.pop(job.request_id, None)
            self._stop_grace(job.request_id)
            self._runs.evict()

    async def _accepted(self, run: Run, items: ticker.Ticker) -> Accepted:
        """The generator's Accepted; `queued` events after `queued_after_s` and whenever the number ahead
        changes; QueueTimeout after `max_queue_wait_s`."""
        options, request_id = self._options, run.request_id
        deadline = time.monotonic() + options.max_queue_wait_s
        wait_s, ahead = options.queued_after_s, None
        while True:
            item = await items.next(min(wait_s, deadline - time.monotonic()))
            if item is not ticker.TIMEOUT:
                self._waiting.pop(request_id, None)
                return item
            if time.monotonic() >= deadline:
                raise QueueTimeout(options.max_queue_wait_s)
            now_ahead = self._ahead(request_id)
            if now_ahead != ahead:
                run.append("queued", queued_payload(request_id, now_ahead))
                ahead = now_ahead
            wait_s = min(options.keepalive_s, 1.0)

    def _ahead(self, request_id: str) -> int:
        """Requests for the same profile submitted earlier that no generator took yet."""
        profile, ahead = self._waiting.get(request_id), 0
        for waiting, waiting_for in self._waiting.items():
            if waiting == request_id:
                return ahead
            ahead += waiting_for == profile
        return 0

    async def _generator_events(self, request_id: str, items: ticker.Ticker) -> AsyncIterator[Progress | EncodedSegment]:
        """The generator's events after Accepted; ReplicaStalled when none came for `stall_timeout_s`."""
        stall_s = self._options.stall_timeout_s
        last = time.monotonic()
        while True:
            try:
                event = await items.next(last + stall_s - time.monotonic())
            except StopAsyncIteration:
                return
            if event is ticker.TIMEOUT:
                logger.warning("request %s: no progress for %.0f s; giving up on its generator", request_id, stall_s)
                raise ReplicaStalled(stall_s)
            last = time.monotonic()
            yield event

    # -- readers ---------------------------------------------------------------------------------------------

    async def _caller_gone(self, caller: Any) -> None:
        """Returns once the reader's ingress replica has died (never without one)."""
        if caller is None:
            await asyncio.Event().wait()
        while True:
            await asyncio.sleep(self._options.orphan_check_s)
            try:
                await asyncio.wait_for(caller.__ray_ready__.remote(), self._options.orphan_check_s)
            except RayActorError:
                return
            except asyncio.TimeoutError:  # a busy ingress is not a dead one
                continue

    def _start_grace(self, run: Run, grace_s: float) -> None:
        """Cancel the request after `grace_s` unless a reader comes (a job is never cancelled for lack of one)."""
        if run.detached or run.finished:
            return
        self._stop_grace(run.request_id)
        task = self._tasks.get(run.request_id)
        if task is None:
            return
        if grace_s <= 0:
            task.cancel()
            return

        async def expire() -> None:
            await asyncio.sleep(grace_s)
            if run.readers == 0 and not run.finished:
                logger.info("request %s: no client for %g s; cancelling it", run.request_id, grace_s)
                task.cancel()

        self._grace[run.request_id] = asyncio.get_running_loop().create_task(expire(), context=contextvars.Context())

    def _stop_grace(self, request_id: str) -> None:
        timer = self._grace.pop(request_id, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
