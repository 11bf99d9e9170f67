"""HTTP Range requests on a whole video held in memory: one `bytes=` range, as players and `curl -r` send."""

from __future__ import annotations

import re

from starlette.responses import Response

from deployments.errors import ServiceError, error_response

RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def byte_range(header: str | None, size: int) -> tuple[int, int] | None | ServiceError:
    """(first, last) inclusive for a satisfiable single range, None to send everything (no header, or a
    form this service does not serve, such as several ranges), or the 416 error."""
    if not header:
        return None
    match = RANGE.match(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        start, end = max(0, size - int(last)), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        return ServiceError(416, "range_not_satisfiable", f"the range {header} is outside the video's {size} bytes")
    return start, end


def ranged_response(data: bytes, range_header: str | None, media_type: str) -> Response:
    """200 with the whole body, 206 with the requested part, or 416 JSON."""
    found = byte_range(range_header, len(data))
    if isinstance(found, ServiceError):
        response = error_response(found)
        response.headers["Content-Range"] = f"bytes */{len(data)}"
        return response
    if found is None:
        return Response(data, media_type=media_type, headers={"Accept-Ranges": "bytes"})
    start, end = found
    headers = {"Accept-Ranges": "bytes", "Content-Range": f"bytes {start}-{end}/{len(data)}"}
    return Response(data[start : end + 1], status_code=206, media_type=media_type, headers=headers)
