"""Awaiting the next item of an async iterator with a timeout that does not cancel the pending item."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

TIMEOUT = object()


class Ticker:
    """Items of `items` one `next()` at a time; a timed-out `next()` leaves the item pending for the next call.

    (asyncio.wait_for would cancel the pending __anext__, and with it the generator's stream.)
    """

    def __init__(self, items: AsyncIterator[Any]) -> None:
        self._iterator = items.__aiter__()
        self._pending: asyncio.Future | None = None

    async def next(self, timeout_s: float) -> Any:
        """The next item, or TIMEOUT if none came within `timeout_s`; StopAsyncIteration at the end."""
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._iterator.__anext__())
        done, _ = await asyncio.wait({self._pending}, timeout=max(0.0, timeout_s))
        if not done:
            return TIMEOUT
        finished, self._pending = self._pending, None
        return finished.result()

    def close(self) -> None:
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()
