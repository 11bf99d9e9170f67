"""Streams that survive a dropped connection: resume `GET /streams/{id}` after the last event read, with
retries and backoff; submit a job (`POST /jobs`) without waiting; cancel a request (`DELETE /streams/{id}`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from client.errors import ClientError, describe_http_error, raise_for_error_response
from client.events import Completed, Cursor, Event, Failed, read_ndjson, read_sse
from client.request import endpoint, new_request_id

READERS = {"sse": read_sse, "chunked": read_ndjson}
Opener = Callable[[Cursor], Iterator[Event]]


class ServerUnavailable(Exception):
    """A 5xx while resuming: an ingress restarting behind the proxy; worth another try."""


def resume_events(client: httpx.Client, server: str, mode: str, cursor: Cursor) -> Iterator[Event]:
    """The events of request `cursor.request_id` after `cursor.seq`: replayed, then live."""
    params: dict[str, Any] = {"after": cursor.seq} | ({"format": "ndjson"} if mode == "chunked" else {})
    with client.stream("GET", endpoint(server, f"/streams/{cursor.request_id}"), params=params) as response:
        if response.status_code >= 500:
            raise ServerUnavailable(f"HTTP {response.status_code}")
        if not response.is_success:
            response.read()
            raise_for_error_response(response)
        yield from READERS[mode](response.iter_lines(), cursor)


def resilient_events(
    first: Opener,
    client: httpx.Client,
    server: str,
    mode: str,
    cursor: Cursor,
    retries: int = 5,
    backoff_s: float = 1.0,
) -> Iterator[Event]:
    """The events of `first(cursor)`; when its connection drops (or ends before complete) once the request
    id is known, those of a resume after the last event read. Up to `retries` tries in a row, waiting
    backoff_s, 2 backoff_s, ... between them; then a ClientError that says how to resume later."""
    opener, failures = first, 0
    while True:
        last: Event | None = None
        try:
            for last in opener(cursor):
                failures = 0
                yield last
            if isinstance(last, (Completed, Failed)) or cursor.request_id is None:
                return
            why = "the stream ended before it was complete"
        except (httpx.TransportError, ServerUnavailable) as error:
            if cursor.request_id is None:
                raise
            why = describe_http_error(error, server) if isinstance(error, httpx.HTTPError) else f"the server answered {error}"
        failures += 1
        if failures > retries:
            raise ClientError(
                f"lost the stream of request {cursor.request_id} and could not resume it in {retries} tries ({why}); "
                f"it may still run: resume it with --resume {cursor.request_id}"
            )
        time.sleep(backoff_s * 2 ** (failures - 1))
        opener = lambda c: resume_events(client, server, mode, c)  # noqa: E731


def submit_job(client: httpx.Client, server: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST /jobs: the request id and the URLs of its stream, status and video."""
    response = client.post(endpoint(server, "/jobs"), json=body, headers={"X-Request-ID": new_request_id()})
    raise_for_error_response(response)
    return response.json()


def cancel(client: httpx.Client, server: str, request_id: str) -> bool:
    """DELETE /streams/{id}, best effort (the user is leaving): whether the server confirmed it."""
    try:
        return client.delete(endpoint(server, f"/streams/{request_id}"), timeout=5.0).is_success
    except httpx.HTTPError:
        return False
