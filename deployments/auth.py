"""Optional bearer-key authentication and CORS for the ingress, as ASGI middleware.

Off by default. With `auth.enabled`, every route needs `Authorization: Bearer <key>` except the web page,
its static files, the API docs and /health; /health answers everyone, but without file paths to a caller
that sent no valid key. Keys never live in the serve config: they are read, on the ingress replica's own
node, from an environment variable (comma or whitespace separated) and/or a file (one key per line).
"""

from __future__ import annotations

import hmac
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.errors import ServiceError, error_response

OPEN_PATHS = frozenset({"/", "/health", "/docs", "/openapi.json"})
OPEN_PREFIXES = ("/static/", "/docs-assets/")
PATH_KEYS = frozenset({"files", "config", "source", "model_dir", "path"})  # /health fields that hold file paths
# An absolute path (/x, ~/x, ./x, C:\x) or a relative one with a folder and a file extension (configs/x.yaml).
FILE_PATH = re.compile(r"(?<![\w.:/-])(?:~|\.{1,2}|[A-Za-z]:)?[/\\][^\s'\",;()\[\]{}]+|\b[\w.-]+(?:/[\w.-]+)+\.\w{1,12}\b")


class AuthOptions(BaseModel):
    """`args.auth` of the serve config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(False, description="Require a bearer key on every route but the page, docs and /health")
    keys_env: str = Field("OMNIAVATAR_API_KEYS", description="Environment variable holding the keys (comma or whitespace separated)")
    keys_file: str | None = Field(None, description="A file with one key per line (# starts a comment)")
    cors_origins: tuple[str, ...] = Field((), description="Origins allowed to call the API from a browser; none by default")


def load_keys(options: AuthOptions, environ: Mapping[str, str] = os.environ) -> frozenset[str]:
    """The accepted keys; raises ValueError when auth is on but there is none."""
    keys = set(environ.get(options.keys_env, "").replace(",", " ").split())
    if options.keys_file:
        path = Path(options.keys_file).expanduser()
        if not path.is_file():
            raise ValueError(f"auth.keys_file {options.keys_file} does not exist on this node")
        keys.update(line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    keys.discard("")
    if options.enabled and not keys:
        where = f"${options.keys_env}" + (f" or {options.keys_file}" if options.keys_file else "")
        raise ValueError(f"auth is enabled but no key was found in {where}")
    return frozenset(keys)


def public_health(body: Any) -> Any:
    """A /health body with every file path removed: path fields dropped, paths inside messages replaced."""
    if isinstance(body, dict):
        return {key: public_health(value) for key, value in body.items() if key not in PATH_KEYS}
    if isinstance(body, list):
        return [public_health(value) for value in body]
    if isinstance(body, str):
        return FILE_PATH.sub("<path>", body)
    return body


class BearerAuth:
    """Answers 401 to requests without a valid key; strips paths from /health for callers without one."""

    def __init__(self, app: ASGIApp, keys: Iterable[str]) -> None:
        self.app = app
        self.keys = tuple(key.encode() for key in keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self._authorized(scope):
            return await self.app(scope, receive, send)
        path = _route_path(scope)
        if path == "/health":
            return await self.app(scope, receive, _PublicHealth(send))
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return await self.app(scope, receive, send)
        response = error_response(ServiceError(401, "unauthorized", "a valid API key is required: send 'Authorization: Bearer <key>'"))
        response.headers["WWW-Authenticate"] = "Bearer"
        await response(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, key = header.partition(b" ")
        if scheme.lower() != b"bearer" or not key.strip():
            return False
        given = key.strip()
        return any(hmac.compare_digest(given, known) for known in self.keys)  # constant time per key


class _PublicHealth:
    """A `send` that rewrites a JSON /health body through public_health."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.start: Message | None = None
        self.body = b""

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.start = message
            return
        if message["type"] != "http.response.body" or self.start is None:
            return await self.send(message)
        self.body += message.get("body", b"")
        if message.get("more_body", False):
            return
        try:
            public = public_health(json.loads(self.body))
        except ValueError:  # not the service's JSON (a bare error page): say nothing it might hold
            public = {"status": "unhealthy"}
        body = json.dumps(public, separators=(",", ":")).encode()
        headers = [(k, v) for k, v in self.start["headers"] if k.lower() != b"content-length"]
        await self.send({**self.start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await self.send({"type": "http.response.body", "body": body})


def _route_path(scope: Scope) -> str:
    """The path inside the application (without the Serve route prefix)."""
    path, root = scope["path"], scope.get("root_path", "").rstrip("/")
    return (path[len(root):] if root and path.startswith(root) else path) or "/"


def install(app: Any, options: AuthOptions) -> None:
    """Add the middleware to a FastAPI app before it starts: auth when enabled, then CORS (outermost) when
    origins are set, so that preflights and 401s carry the CORS headers."""
    if options.enabled:
        app.add_middleware(BearerAuth, keys=load_keys(options))
    if options.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(options.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID", "Last-Event-ID", "Range"],
            expose_headers=["X-Request-ID", "Retry-After", "Content-Range", "Location"],
        )
