"""Reading a request body within a time limit and a size limit, so that every client can read the answer.

A body over the limit is still read (and dropped) up to `drain_bytes` before the 413 is sent: clients such
as urllib and requests send the whole body before they read a response, and a server that closes the
connection while they are sending leaves them with a reset connection instead of the 413.
"""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request

from model.errors import RequestError
from model.request import RequestLimits, body_too_large


def body_timed_out(timeout_s: float) -> RequestError:
    return RequestError(
        "body_timeout", f"the request body was not received within {timeout_s:g} s; send it at once", status=408
    )


async def read_body(http_request: Request, limits: RequestLimits, timeout_s: float, drain_bytes: int) -> bytes:
    """The whole body, or RequestError 408 (not received within `timeout_s`) or 413 (over the limit)."""
    deadline = time.monotonic() + timeout_s
    declared = http_request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max(limits.max_body_bytes, drain_bytes):
        raise body_too_large(int(declared), limits)  # too big even to drain: answered at once
    chunks: list[bytes] = []
    size = 0
    stream = http_request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), max(0.0, deadline - time.monotonic()))
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            raise body_timed_out(timeout_s) from None
        size += len(chunk)
        if size > drain_bytes:
            break
        if size <= limits.max_body_bytes:
            chunks.append(chunk)
        else:
            chunks.clear()  # over the limit: the rest is only drained
    if size > limits.max_body_bytes:
        raise body_too_large(int(declared) if declared.isdigit() else size, limits)
    return b"".join(chunks)
