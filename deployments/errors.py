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
    if isinstance(cause, RayActorError):
        return ServiceError(503, "replica_lost", "the generator replica stopped during the request; retry", retry_after_s=retry_after_s)
    logger.error("request %s failed: %s", request_id, cause, exc_info=cause)
    return ServiceError(500, "generation_failed", f"generation failed ({type(cause).__name__}: {str(cause)[:300]}); request {request_id}")


def error_response(error: ServiceError, request_id: str | None = None) -> JSONResponse:
    """The JSON error of protocol.md, with Retry-After for 503s."""
    headers = {"Retry-After": str(error.retry_after_s)} if error.retry_after_s is not None else {}
    if request_id:
        headers["X-Request-ID"] = request_id
    return JSONResponse({"success": False, "error": error.to_dict()}, status_code=error.status, headers=headers)
