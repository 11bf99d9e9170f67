"""Errors as data: every failure becomes a JSON error response (before the stream starts) or the stream's
final error event (after), with one mapping from exceptions to status, code and message."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from starlette.responses import JSONResponse

from model.errors import NotReadyError, RequestError

logger = logging.getLogger("ray.serve")


class QueueTimeout(Exception):
    """No generator took the request within max_queue_wait_s."""

    def __init__(self, waited_s: float) -> None:
        super().__init__(f"no generator was free within {waited_s:g} s; retry later")


class ReplicaStalled(Exception):
    """The generator made no step progress for stall_timeout_s."""

    def __init__(self, stall_timeout_s: float) -> None:
        super().__init__(f"the generator made no progress for {stall_timeout_s:g} s and is being replaced; retry")


@dataclass(frozen=True)
class ServiceError:
    """What the client is told."""

    status: int
    code: str
    message: str
    field: str | None = None
    retry_after_s: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "field": self.field}


def as_service_error(error: BaseException, retry_after_s: int, request_id: str | None = None) -> ServiceError:
    """Map any exception (also one raised in another replica) to what the client sees."""
    cause = error.cause if isinstance(error, RayTaskError) and error.cause is not None else error
    if isinstance(cause, RequestError):
        return ServiceError(cause.status, cause.code, cause.message, cause.field)
    if isinstance(cause, NotReadyError):
        return ServiceError(503, "not_ready", cause.message, retry_after_s=max(1, round(cause.retry_after_s)))
    if isinstance(cause, BackPressureError):
        return ServiceError(503, "overloaded", "all generators are busy and the queue is full; retry later", retry_after_s=retry_after_s)
    if isinstance(cause, DeploymentUnavailableError):
        return ServiceError(503, "unavailable", "the generator deployment is not available; retry later", retry_after_s=retry_after_s)
    if isinstance(cause, QueueTimeout):
        return ServiceError(503, "queue_timeout", str(cause), retry_after_s=retry_after_s)
    if isinstance(cause, ReplicaStalled):
        return ServiceError(503, "replica_stalled", str(cause), retry_after_s=retry_after_s)
    if isinstance(cause, RayActorError):
        return ServiceError(503, "replica_lost", "the generator replica stopped during the request; retry", retry_after_s=retry_after_s)
    logger.error("request %s failed: %s", request_id, cause, exc_info=cause)
    return ServiceError(500, "generation_failed", f"the video could not be generated; the service log has the details of request {request_id}")


def error_response(error: ServiceError) -> JSONResponse:
    """The JSON error of docs/protocol.md, with Retry-After for 503s (Serve adds the one X-Request-ID header)."""
    headers = {"Retry-After": str(error.retry_after_s)} if error.retry_after_s is not None else {}
    return JSONResponse({"success": False, "error": error.to_dict()}, status_code=error.status, headers=headers)
