"""What a client tells its user when something goes wrong: one line on stderr and an exit code, no traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import httpx

from client.events import Failed, ProtocolError, failed_from

EXIT_SERVER = 1  # the server refused or failed the request, or could not be reached
EXIT_USAGE = 2  # bad arguments, or local files that cannot be read or written (argparse uses 2 as well)
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT


class ClientError(Exception):
    """An expected failure: `message` is shown as it is and the process exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = EXIT_SERVER) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def server_error(failure: Failed, status: int | None = None, retry_after: str | None = None) -> ClientError:
    """A ClientError carrying the server's own message: from an HTTP error reply (`status`) or a stream's error event."""
    if status is None:
        head = f"the stream ended with an error ({failure.code})"
    else:
        verb = "refused the request" if status < 500 else "could not serve the request"
        head = f"the server {verb} (HTTP {status}, {failure.code})"
    then = f" (retry after {retry_after} s)" if retry_after else ""
    return ClientError(f"{head}: {failure.message}{then}")


def raise_for_error_response(response: httpx.Response) -> None:
    """Raise a ClientError with the server's own message if `response` (already read) is not a 2xx."""
    if response.is_success:
        return
    try:
        failure = failed_from(response.json())
    except ValueError:  # not JSON, e.g. a proxy's HTML page
        failure = Failed(
            "http_error", response.text.strip().splitlines()[0][:200] if response.text.strip() else response.reason_phrase
        )
    raise server_error(failure, response.status_code, response.headers.get("retry-after"))


def describe_http_error(error: httpx.HTTPError, server: str) -> str:
    """One line for a transport failure: refused connection, timeout, dropped stream."""
    if isinstance(error, httpx.ConnectError):
        return f"cannot connect to {server}: {error or 'connection failed'} (is the service running there?)"
    if isinstance(error, httpx.ConnectTimeout):
        return f"timed out connecting to {server}"
    if isinstance(error, httpx.TimeoutException):
        return f"timed out waiting for {server} (raise --timeout for long videos)"
    if isinstance(error, httpx.RemoteProtocolError):
        return f"the connection to {server} broke off: {error}"
    return f"request to {server} failed: {type(error).__name__}: {error}"


def run_cli(main: Callable[[Any], int], args: Any, prog: str) -> int:
    """Run `main(args)` and turn expected failures into 'prog: error: ...' on stderr and an exit code."""
    try:
        return main(args)
    except ClientError as error:
        message, code = error.message, error.exit_code
    except ProtocolError as error:
        message, code = f"unexpected reply from the server: {error}", EXIT_SERVER
    except httpx.HTTPError as error:
        message, code = describe_http_error(error, getattr(args, "server", "the server")), EXIT_SERVER
    except OSError as error:  # an output file that cannot be written (files.atomic_output names it)
        message, code = f"cannot write {error.filename}: {error.strerror}" if error.filename else str(error), EXIT_USAGE
    except KeyboardInterrupt:
        message, code = "interrupted", EXIT_INTERRUPTED
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code
