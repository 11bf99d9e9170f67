"""The errors the model seam raises: a refused request, a backend that is not ready, a cancelled generation."""

from __future__ import annotations


class RequestError(Exception):
    """A request the service refuses, with the HTTP status, a snake_case code and the field at fault.

    The message says what is wrong and how to fix it; it is shown to the client as is.
    """

    def __init__(self, code: str, message: str, field: str | None = None, status: int = 422) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.status = status

    def to_dict(self) -> dict[str, str | None]:
        return {"code": self.code, "message": self.message, "field": self.field}

    def __reduce__(self):  # keep all attributes when the error crosses a process boundary
        return (type(self), (self.code, self.message, self.field, self.status))


class NotReadyError(Exception):
    """The backend cannot take requests: still loading, or its load failed (the message says which)."""

    def __init__(self, message: str, retry_after_s: float = 5.0) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s

    def __reduce__(self):
        return (type(self), (self.message, self.retry_after_s))


class GenerationCancelled(Exception):
    """Raised inside a backend at its next checkpoint after the request was cancelled."""
