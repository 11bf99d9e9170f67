"""The backend seam: what every avatar backend implements, and how one is found by name.

A deployment drives a backend from a worker thread: `generate()` is a plain synchronous iterator that
yields one segment's kept frames at a time, checks a CancelToken between units of work (denoising steps,
frames) and reports progress through a callback.
"""

from __future__ import annotations

import importlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from model.config import ModelConfig
from model.errors import GenerationCancelled
from model.plan import SegmentPlan
from model.request import GenerateRequest

StepCallback = Callable[[int, int, int], None]
"""on_step(segment_index, step, num_steps): `step` counts from 1 and reaches num_steps once per segment."""

BACKENDS: dict[str, str] = {
    "preview": "model.preview.backend:PreviewBackend",
    "omniavatar": "model.omniavatar.backend:OmniAvatarBackend",
}


@dataclass(frozen=True, eq=False)
class SegmentFrames:
    """One segment's kept frames, ready to encode."""

    index: int
    frames: np.ndarray  # (n, H, W, 3) uint8, n == plan.segments[index].num_frames
    dit_calls: int | None = None  # model forwards that ran the network for this segment, when the backend counts them


class CancelToken:
    """A thread-safe flag the deployment sets when the client goes away."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def checkpoint(self) -> None:
        """Call between units of work; raises GenerationCancelled once cancel() was called."""
        if self._event.is_set():
            raise GenerationCancelled()

    def wait(self, seconds: float) -> None:
        """Sleep up to `seconds`, waking at once on cancel (then raising GenerationCancelled)."""
        self._event.wait(seconds)
        self.checkpoint()


class AvatarBackend(ABC):
    """A video generator under the shared segment plan.

    The constructor loads everything the backend needs (it may take minutes and raises a clear error on
    bad files); `warm_up` runs once before the first request; `generate` is called once per request.
    """

    name: ClassVar[str]

    def __init__(self, config: ModelConfig) -> None:
        self.config = config

    def warm_up(self) -> None:
        """Run whatever makes the first request as fast as the next ones."""

    def describe(self) -> dict[str, Any]:
        """What /health reports about this backend."""
        return {"backend": self.name, "model": self.name}

    @abstractmethod
    def generate(
        self, request: GenerateRequest, plan: SegmentPlan, cancel: CancelToken, on_step: StepCallback
    ) -> Iterator[SegmentFrames]:
        """Generate a request's video.

        Args:
            request: the validated request, media decoded.
            plan: its segment plan (computed by the caller with `plan_segments`).
            cancel: checked between units of work; `cancel.checkpoint()` raises GenerationCancelled.
            on_step: called after every unit of work with (segment_index, step, num_steps).

        Yields:
            One SegmentFrames per planned segment, in order, as soon as its frames exist.

        Raises:
            GenerationCancelled: the request was cancelled.
        """


def backend_class(name: str) -> type[AvatarBackend]:
    """The backend class registered under `name` (imported only when asked for)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; the backends are {sorted(BACKENDS)}")
    module, attr = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), attr)
