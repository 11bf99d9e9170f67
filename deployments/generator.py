"""AvatarGenerator: the model deployment. A shim that loads a backend, runs each job through the thread
bridge and streams Accepted, then Progress and EncodedSegment events, as an async generator."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any

from ray import serve

from deployments.events import Accepted, EncodedSegment, GenerationJob, Progress
from deployments.metrics import GeneratorMetrics
from deployments.pipeline import SegmentPipeline
from model.backend import AvatarBackend, backend_class
from model.config import ModelConfig
from model.errors import NotReadyError
from model.media import EncodingOptions

logger = logging.getLogger("ray.serve")
RECENT_REQUESTS = 256


class _LatestMessage(logging.Handler):
    """Keeps the last message a backend logs while it loads: its load progress for /health."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.latest: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.latest = record.getMessage()


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


@serve.deployment(name="AvatarGenerator", ray_actor_options={"num_cpus": 1})
class AvatarGenerator:
    """Loads the configured backend in the background, then generates one job per call."""

    def __init__(
        self,
        config: ModelConfig,
        encoding: EncodingOptions,
        backend_cls: type[AvatarBackend] | None = None,
        load_timeout_s: float = 3600.0,
    ) -> None:
        self._config = config
        self._encoding = encoding
        self._backend_cls = backend_cls or backend_class(config.backend)
        self._load_timeout_s = load_timeout_s
        self._backend: AvatarBackend | None = None
        self._load_error: str | None = None
        self._load_started = time.monotonic()
        self._load_s: float | None = None
        self._load_progress = _LatestMessage()
        self._metrics = GeneratorMetrics()
        self._recent: OrderedDict[str, RequestRecord] = OrderedDict()
        threading.Thread(target=self._load, name="backend-load", daemon=True).start()

    def _load(self) -> None:
        model_logger = logging.getLogger("model")  # backends log their load stages there
        model_logger.setLevel(logging.INFO)
        model_logger.addHandler(self._load_progress)
        try:
            logger.info("loading backend %r from %s", self._config.backend, self._config.source)
            backend = self._backend_cls(self._config)
            backend.warm_up()
            self._load_s = time.monotonic() - self._load_started
            self._backend = backend
            logger.info("backend %r ready after %.1f s", self._config.backend, self._load_s)
        except Exception as error:
            self._load_error = f"{type(error).__name__}: {error}"
            logger.exception("backend %r failed to load", self._config.backend)
        finally:
            model_logger.removeHandler(self._load_progress)

    @property
    def _state(self) -> str:
        if self._backend is not None:
            return "ready"
        if self._load_error is not None:
            return "failed"
        if time.monotonic() - self._load_started > self._load_timeout_s:
            return "timed_out"
        return "loading"

    async def describe(self) -> dict[str, Any]:
        """The backend and its state, for /health."""
        info = self._backend.describe() if self._backend else {"backend": self._config.backend}
        return {
            **info,
            "state": self._state,
            "error": self._load_error,
            "load_s": None if self._load_s is None else round(self._load_s, 2),
            "load_progress": None if self._backend else self._load_progress.latest,
            "config": self._config.source,
        }

    async def request_status(self, request_id: str) -> dict[str, Any] | None:
        """What became of a recent request (state, steps done after cancel, ...), or None."""
        record = self._recent.get(request_id)
        return None if record is None else asdict(record)

    async def generate(self, job: GenerationJob) -> AsyncIterator[Accepted | Progress | EncodedSegment]:
        """Accepted at once, then Progress and EncodedSegment events; stops within a step on cancel."""
        backend = self._ready_backend()
        record = self._track(job.request_id)
        yield Accepted(request_id=job.request_id, backend=backend.describe())

        def on_step(_: Progress) -> None:
            record.steps += 1
            self._metrics.steps.inc()
            if record.cancel_requested:
                record.steps_after_cancel += 1

        def on_stop(outcome: str) -> None:
            record.state = outcome

        pipeline = SegmentPipeline(backend, job, self._encoding, on_step=on_step, on_stop=on_stop)
        try:
            async for event in pipeline.events():
                if isinstance(event, EncodedSegment):
                    record.segments += 1
                    record.segment_compute_s.append(event.compute_s)
                    record.segment_encode_s.append(event.encode_s)
                    self._metrics.segment_seconds.observe(event.compute_s)
                    self._metrics.encode_seconds.observe(event.encode_s)
                yield event
        except asyncio.CancelledError:
            record.cancel_requested = True
            self._metrics.cancelled.inc()
            logger.info("request %s cancelled by the client after %d segments", job.request_id, record.segments)
            raise
        except Exception:
            self._metrics.failed.inc()
            raise
        finally:
            record.compute_idle_s = pipeline.compute_idle_s
            pipeline.cancel()  # a no-op after completion; stops the threads on any other exit

    def _ready_backend(self) -> AvatarBackend:
        if self._backend is not None:
            return self._backend
        state = self._state
        if state == "loading":
            waited = time.monotonic() - self._load_started
            raise NotReadyError(f"the {self._config.backend} backend is still loading ({waited:.0f} s so far); retry shortly")
        if state == "timed_out":
            raise NotReadyError(f"the {self._config.backend} backend did not load within {self._load_timeout_s:.0f} s", 30)
        raise NotReadyError(f"the {self._config.backend} backend failed to load: {self._load_error}", 60)

    def _track(self, request_id: str) -> RequestRecord:
        record = RequestRecord(request_id)
        self._recent[request_id] = record
        while len(self._recent) > RECENT_REQUESTS:
            self._recent.popitem(last=False)
        return record
