"""The thread bridge: a backend's synchronous generate() in one worker thread, segment encoding in another,
and their output as an async iterator of events.

The compute thread hands each segment to the encoder through a queue of one, so segment k is encoded while
segment k + 1 is computed and at most one finished segment waits; events reach the event loop through
call_soon_threadsafe. stop() cancels both threads at their next check (one denoising step at most) and
returns once they have ended, so a GPU never runs two generations because a cancelled one was still on it.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from deployments.events import EncodedSegment, GenerationJob, Progress
from model.backend import AvatarBackend, CancelToken, SegmentFrames
from model.errors import GenerationCancelled
from model.media import EncodingOptions, SegmentEncoder

logger = logging.getLogger("ray.serve")
QUEUE_POLL_S = 0.05


@dataclass
class _Failed:
    error: BaseException


_DONE = object()


class SegmentPipeline:
    """Runs one job; iterate `events()` on the event loop."""

    def __init__(
        self,
        backend: AvatarBackend,
        job: GenerationJob,
        encoding: EncodingOptions,
        on_step: Callable[[Progress], None] = lambda _: None,
    ) -> None:
        self.job = job
        self.cancel_token = CancelToken()
        self._backend = backend
        self._encoding = encoding
        self._on_step = on_step
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue = asyncio.Queue()
        self._to_encoder: queue.Queue = queue.Queue(maxsize=1)
        self._threads = [
            threading.Thread(target=self._compute, name=f"compute-{job.request_id}", daemon=True),
            threading.Thread(target=self._encode, name=f"encode-{job.request_id}", daemon=True),
        ]
        self.compute_idle_s = 0.0  # time the compute thread waited for the encoder

    async def events(self) -> AsyncIterator[Progress | EncodedSegment]:
        """Progress and segments in order; raises the backend's or encoder's error, if any."""
        for thread in self._threads:
            thread.start()
        while True:
            item = await self._events.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item

    def fail(self, error: BaseException) -> None:
        """Stop the threads and make events() raise `error` (call on the event loop)."""
        self.cancel_token.cancel()
        self._events.put_nowait(_Failed(error))

    async def stop(self) -> None:
        """Cancel, and return only once both threads have ended, even if the awaiting task is cancelled meanwhile
        (the cancellation is raised afterwards)."""
        self.cancel_token.cancel()
        joined = asyncio.ensure_future(asyncio.to_thread(self._join))
        interrupted = False
        while not joined.done():
            try:
                await asyncio.shield(joined)
            except asyncio.CancelledError:
                interrupted = True
        if interrupted:
            raise asyncio.CancelledError()

    def _join(self) -> None:
        for thread in self._threads:
            if thread.ident is not None:  # started
                thread.join()

    # -- threads --------------------------------------------------------------------------------------------

    def _post(self, item: object) -> None:
        self._loop.call_soon_threadsafe(self._events.put_nowait, item)

    def _step(self, segment_index: int, step: int, num_steps: int) -> None:
        progress = Progress(segment_index, step, num_steps)
        self._on_step(progress)
        self._post(progress)

    def _compute(self) -> None:
        outcome: object = _DONE
        try:
            started = time.monotonic()
            for segment in self._backend.generate(self.job.request, self.job.plan, self.cancel_token, self._step):
                self._hand_to_encoder((segment, time.monotonic() - started))
                started = time.monotonic()
        except GenerationCancelled:
            return
        except BaseException as error:  # the encoder thread reports it after the segments before it
            logger.exception("request %s: generation failed", self.job.request_id)
            outcome = _Failed(error)
        try:
            self._hand_to_encoder(outcome)
        except GenerationCancelled:
            pass

    def _hand_to_encoder(self, item: object) -> None:
        """Blocks while the encoder is busy with the previous segment; raises GenerationCancelled on cancel."""
        waited_from = time.monotonic()
        while True:
            try:
                self._to_encoder.put(item, timeout=QUEUE_POLL_S)
                break
            except queue.Full:
                self.cancel_token.checkpoint()
        self.compute_idle_s += time.monotonic() - waited_from

    def _encode(self) -> None:
        try:
            encoder = SegmentEncoder(self.job.plan, self.job.request.audio, self._encoding)
            while True:
                item = self._next_for_encoder()
                if item is None:  # cancelled
                    return
                if item is _DONE or isinstance(item, _Failed):
                    self._post(item)
                    return
                segment, compute_s = item
                self._post(self._encoded(encoder, segment, compute_s))
        except BaseException as error:
            logger.exception("request %s: encoding failed", self.job.request_id)
            self.cancel_token.cancel()
            self._post(_Failed(error))

    def _next_for_encoder(self) -> object | None:
        while not self.cancel_token.cancelled:
            try:
                return self._to_encoder.get(timeout=QUEUE_POLL_S)
            except queue.Empty:
                continue
        return None

    def _encoded(self, encoder: SegmentEncoder, segment: SegmentFrames, compute_s: float) -> EncodedSegment:
        spec = self.job.plan.segments[segment.index]
        started = time.monotonic()
        mp4 = encoder.encode(spec, segment.frames)
        return EncodedSegment(
            index=spec.index,
            total=self.job.plan.num_segments,
            start_frame=spec.start_frame,
            num_frames=spec.num_frames,
            mp4=mp4,
            codecs=encoder.codecs,
            compute_s=compute_s,
            encode_s=time.monotonic() - started,
        )
