"""The replay log of one request and the registry of all requests with their retention: what a client that
lost its connection resumes from, and what a job's status and video are read from. Plain asyncio, no Ray.

A run's log keeps every event a client must see (start, segments, the final complete or error) and only the
latest of a run of `queued` or `progress` events, so a live run holds its segments so far and nothing else;
a finished run is kept for `retention_s` and within `max_retained_bytes`, oldest first out.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from deployments.errors import ServiceError

SUPERSEDED = ("queued", "progress")  # of several in a row, a late reader needs only the last
EVICTED_IDS_KEPT = 4096  # how many evicted ids are still recognised as evicted rather than unknown
TERMINAL = ("complete", "error")


@dataclass(frozen=True)
class StreamEvent:
    """One event of a request's stream: `seq` counts from 0 per request; a segment's MP4 travels as bytes
    (the payload has no base64 of it); an error carries its status for the whole-video route."""

    seq: int
    kind: str  # queued | start | progress | segment | complete | error
    payload: dict[str, Any]
    mp4: bytes | None = None
    error: ServiceError | None = None


@dataclass(eq=False)
class Run:
    """One request: its log, who may read it, and what its job status says."""

    request_id: str
    owner: str | None  # digest of the API key that created it; None without authentication
    detached: bool  # a job: runs to the end whoever is connected
    total_segments: int
    total_steps: int
    created: float = field(default_factory=time.time)
    state: str = "queued"  # queued -> running -> completed | failed | cancelled
    accepted_at: float | None = None  # monotonic
    finished_at: float | None = None  # wall clock
    steps_done: int = 0
    segments_done: int = 0
    readers: int = 0
    video: bytes | None = None  # the whole MP4, built on its first request
    events: list[StreamEvent] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def finished(self) -> bool:
        return self.state in ("completed", "failed", "cancelled")

    @property
    def retained_bytes(self) -> int:
        return sum(len(event.mp4) for event in self.events if event.mp4) + len(self.video or b"")

    def append(self, kind: str, payload: dict[str, Any], mp4: bytes | None = None, error: ServiceError | None = None) -> None:
        """Add an event (replacing the previous one if both are queued or both progress) and wake readers."""
        seq = self.events[-1].seq + 1 if self.events else 0
        if self.events and kind in SUPERSEDED and self.events[-1].kind == kind:
            self.events.pop()
        self.events.append(StreamEvent(seq, kind, payload, mp4, error))
        if kind == "progress":
            self.steps_done += 1
        elif kind == "segment":
            self.segments_done += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def after(self, seq: int) -> list[StreamEvent]:
        """The kept events after `seq`, in order."""
        return [event for event in self.events if event.seq > seq]

    def changed(self) -> asyncio.Event:
        """Set at the next append: take it before reading `after()`, then wait on it."""
        return self._changed

    def finish(self, state: str) -> None:
        self.state = state
        self.finished_at = time.time()

    def status(self) -> dict[str, Any]:
        """A job's state, progress and estimated time left."""
        progress = self.steps_done / self.total_steps if self.total_steps else 0.0
        eta_s = None
        if self.state == "running" and self.accepted_at is not None and self.steps_done:
            elapsed = time.monotonic() - self.accepted_at
            eta_s = round(elapsed / self.steps_done * (self.total_steps - self.steps_done), 1)
        last = self.events[-1] if self.events else None
        return {
            "request_id": self.request_id,
            "state": self.state,
            "detached": self.detached,
            "progress": round(1.0 if self.state == "completed" else progress, 4),
            "steps_done": self.steps_done,
            "total_steps": self.total_steps,
            "segments_done": self.segments_done,
            "total_segments": self.total_segments,
            "eta_s": eta_s,
            "created": self.created,
            "finished": self.finished_at,
            "error": last.payload["error"] if last is not None and last.kind == "error" else None,
        }


class RunRegistry:
    """Every known run by id, finished ones evicted by age and total size, and the ids recently evicted."""

    def __init__(self, retention_s: float, max_retained_bytes: int) -> None:
        self.retention_s = retention_s
        self.max_retained_bytes = max_retained_bytes
        self._runs: OrderedDict[str, Run] = OrderedDict()
        self._evicted: deque[str] = deque(maxlen=EVICTED_IDS_KEPT)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._runs

    def __len__(self) -> int:
        return len(self._runs)

    def add(self, run: Run) -> None:
        self._runs[run.request_id] = run

    def drop(self, request_id: str) -> None:
        """Forget a run that never started (refused at admission): its id is free again."""
        self._runs.pop(request_id, None)

    def live(self) -> list[Run]:
        return [run for run in self._runs.values() if not run.finished]

    def get(self, request_id: str, owner: str | None) -> Run | ServiceError:
        """The run, or the 404 that says whether the id is unknown or was evicted. A run created with
        another key is unknown to this one."""
        self.evict()
        run = self._runs.get(request_id)
        if run is not None and (run.owner is None or run.owner == owner):
            return run
        if run is None and request_id in self._evicted:
            return ServiceError(
                404,
                "request_evicted",
                f"request {request_id} finished and was evicted (kept {self.retention_s:g} s and within "
                f"{self.max_retained_bytes} bytes, oldest first)",
            )
        return ServiceError(404, "unknown_request", f"no request {request_id} is known to this service (or to this API key)")

    def retained_bytes(self) -> int:
        return sum(run.retained_bytes for run in self._runs.values() if run.finished)

    def evict(self) -> list[str]:
        """Drop finished runs past `retention_s`, then the oldest finished ones while over the byte limit."""
        now = time.time()
        finished = sorted((run for run in self._runs.values() if run.finished), key=lambda run: run.finished_at or 0.0)
        gone = [run for run in finished if now - (run.finished_at or now) > self.retention_s]
        kept = [run for run in finished if run not in gone]
        total = sum(run.retained_bytes for run in kept)
        while kept and total > self.max_retained_bytes:
            oldest = kept.pop(0)
            total -= oldest.retained_bytes
            gone.append(oldest)
        for run in gone:
            del self._runs[run.request_id]
            self._evicted.append(run.request_id)
        return [run.request_id for run in gone]
