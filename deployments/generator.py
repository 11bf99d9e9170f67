"""AvatarGenerator: the model deployment. Loads a backend before Serve routes to it, runs each job through
the thread bridge and streams Accepted, then Progress and EncodedSegment events, as an async generator.

Serve routes requests to a replica once its async __init__ has returned, so __init__ returns only after the
backend has loaded and warmed up; a failed or timed-out load raises there and Serve starts another replica.
check_health fails while a generation makes no step progress for `stall_timeout_s`, so Serve replaces a
replica whose GPU work hangs. A job whose ingress replica died is stopped within `orphan_check_s`. A replica over several devices runs its
further ranks as child actors (`ranks.py`); a failed or dead rank fails check_health too.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle

from deployments.events import Accepted, EncodedSegment, GenerationJob, Progress
from deployments.health import publish_backend
from deployments.metrics import GeneratorMetrics
from deployments.options import StreamOptions
from deployments.pipeline import SegmentPipeline
from deployments.ranks import RankGroup
from deployments.text_encoder import RemoteTextEncoder
from model.backend import AvatarBackend, backend_class
from model.config import ModelConfig
from model.media import EncodingOptions

logger = logging.getLogger("ray.serve")
RECENT_REQUESTS = 256


class OrphanedJob(Exception):
    """The ingress replica that submitted the job is gone: nobody reads its stream."""


@dataclass
class RequestRecord:
    """What became of one request: kept for the last few hundred, for operators and tests."""

    request_id: str
    state: str = "running"  # running -> completed | cancelled | failed
    steps: int = 0
    steps_after_cancel: int = 0
    segments: int = 0
    segment_compute_s: list[float] = field(default_factory=list)  # backend time per segment
    segment_encode_s: list[float] = field(default_factory=list)
    compute_idle_s: float = 0.0  # compute thread waiting on the encoder
    cancel_requested: bool = False
    others_running_at_start: int = 0  # generations of this replica whose threads had not ended (expected 0)


@serve.deployment(name="AvatarGenerator", ray_actor_options={"num_cpus": 1})
class AvatarGenerator:
    """Loads the configured backend, then generates one job per call."""

    async def __init__(
        self,
        config: ModelConfig,
        encoding: EncodingOptions,
        backend_cls: type[AvatarBackend] | None = None,
        load_timeout_s: float = 3600.0,
        options: StreamOptions = StreamOptions(),
        text_encoder: DeploymentHandle | None = None,
    ) -> None:
        self._encoding = encoding
        self._options = options
        self._metrics = GeneratorMetrics()
        self._recent: OrderedDict[str, RequestRecord] = OrderedDict()
        self._running: set[SegmentPipeline] = set()  # pipelines whose threads may still run
        self._one_at_a_time = asyncio.Lock()  # Serve frees a cancelled call's slot before its threads end
        self._last_progress = time.monotonic()
        shared = {} if text_encoder is None else {"text_encoder": RemoteTextEncoder(text_encoder)}  # backend kwargs
        self._ranks = RankGroup.start(config, shared)  # the further ranks of a replica over several devices, or None
        backend_cls = functools.partial(backend_cls or backend_class(config.backend), **shared)
        self._backend = await self._load(config, backend_cls, load_timeout_s)
        description = self._backend.describe()
        if shared:
            description["text_encoder"] = {"shared": True, **await asyncio.to_thread(shared["text_encoder"].describe)}
        if self._ranks is not None:
            await self._ranks.loaded(load_timeout_s)
            description["parallel"] = {**description.get("parallel", {}), **self._ranks.describe()}
        replica = serve.get_replica_context()
        await asyncio.to_thread(publish_backend, replica.app_name, replica.deployment, description)

    @staticmethod
    async def _load(config: ModelConfig, backend_cls: Callable[[ModelConfig], AvatarBackend], timeout_s: float) -> AvatarBackend:
        def load() -> AvatarBackend:
            logging.getLogger("model").setLevel(logging.INFO)  # backends log their load stages there
            backend = backend_cls(config)
            backend.warm_up()
            return backend

        started = time.monotonic()
        logger.info("loading backend %r from %s", config.backend, config.source)
        try:
            backend = await asyncio.wait_for(asyncio.to_thread(load), timeout_s)
        except asyncio.TimeoutError:
            raise RuntimeError(f"the {config.backend} backend did not load within {timeout_s:g} s") from None
        logger.info("backend %r ready after %.1f s", config.backend, time.monotonic() - started)
        return backend

    async def check_health(self) -> None:
        """Serve replaces the replica after a few failures: here, a generation without step progress."""
        idle_s = time.monotonic() - self._last_progress
        if self._running and idle_s > self._options.stall_timeout_s:
            raise RuntimeError(f"no step progress for {idle_s:.0f} s (stall_timeout_s {self._options.stall_timeout_s:g})")
        if self._ranks is not None:
            await self._ranks.check(self._options.health_timeout_s)

    async def request_status(self, request_id: str) -> dict[str, Any] | None:
        """What became of a recent request (state, steps done after cancel, ...), or None."""
        record = self._recent.get(request_id)
        return None if record is None else asdict(record)

    async def generate(self, job: GenerationJob) -> AsyncIterator[Accepted | Progress | EncodedSegment]:
        """Accepted once no other generation runs here, then Progress and EncodedSegment events; stops within a
        step on cancel, and lets the next generation start only once the compute and encode threads ended."""
        async with self._one_at_a_time:
            async for event in self._generate(job):
                yield event

    async def _generate(self, job: GenerationJob) -> AsyncIterator[Accepted | Progress | EncodedSegment]:
        record = self._track(job.request_id)
        record.others_running_at_start = len(self._running)
        yield Accepted(request_id=job.request_id, backend=self._backend.describe())

        def on_step(_: Progress) -> None:
            self._last_progress = time.monotonic()
            record.steps += 1
            self._metrics.steps.inc()
            if record.cancel_requested:
                record.steps_after_cancel += 1

        pipeline = SegmentPipeline(self._backend, job, self._encoding, on_step=on_step)
        self._running.add(pipeline)
        self._last_progress = time.monotonic()
        watch = asyncio.ensure_future(self._watch_caller(job, pipeline))
        try:
            if self._ranks is not None:
                self._ranks.submit(job.request, job.plan)
            async for event in pipeline.events():
                if isinstance(event, EncodedSegment):
                    record.segments += 1
                    record.segment_compute_s.append(event.compute_s)
                    record.segment_encode_s.append(event.encode_s)
                    self._metrics.segment_seconds.observe(event.compute_s)
                    self._metrics.encode_seconds.observe(event.encode_s)
                yield event
            record.state = "completed"
        except (asyncio.CancelledError, GeneratorExit, OrphanedJob) as stop:
            record.state, record.cancel_requested = "cancelled", True
            self._metrics.cancelled.inc()
            why = "because its ingress is gone" if isinstance(stop, OrphanedJob) else "by the client"
            logger.info("request %s cancelled %s after %d segments", job.request_id, why, record.segments)
            raise
        except Exception as error:
            record.state = "failed"
            self._metrics.failed.inc()
            if self._ranks is not None:
                self._ranks.failed(error)
            raise
        finally:
            watch.cancel()
            record.compute_idle_s = pipeline.compute_idle_s
            try:
                await pipeline.stop()
            finally:
                self._running.discard(pipeline)

    async def _watch_caller(self, job: GenerationJob, pipeline: SegmentPipeline) -> None:
        """Stop the job once the ingress replica that reads its stream has died."""
        if job.caller is None:
            return
        while True:
            await asyncio.sleep(self._options.orphan_check_s)
            try:
                await asyncio.wait_for(job.caller.__ray_ready__.remote(), self._options.orphan_check_s)
            except RayActorError:
                pipeline.fail(OrphanedJob(f"the ingress of request {job.request_id} is gone"))
                return
            except asyncio.TimeoutError:  # a busy ingress is not a dead one
                continue

    def _track(self, request_id: str) -> RequestRecord:
        record = RequestRecord(request_id)
        self._recent[request_id] = record
        while len(self._recent) > RECENT_REQUESTS:
            self._recent.popitem(last=False)
        return record
