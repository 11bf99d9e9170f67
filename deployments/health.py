"""/health without the generators' request queue: their replica counts come from Serve's own status, and
the backend's description from what a generator publishes in Ray's key-value store once it has loaded.

A generator replica is RUNNING in Serve's status only once its backend has loaded and warmed up (its
async __init__ returned), so the count of RUNNING replicas is the count of replicas that can generate.
Concurrent calls share one lookup, and an answer is reused for `CACHE_S`, so a flood of /health calls
costs the Serve controller one status call per `CACHE_S`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ray import serve
from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_put

logger = logging.getLogger("ray.serve")
CACHE_S = 0.5
FAILED_STATUSES = ("DEPLOY_FAILED", "UNHEALTHY")
KV_NAMESPACE = "avatar"


def _backend_key(app_name: str, deployment_name: str) -> str:
    return f"{app_name}/{deployment_name}/backend"


def publish_backend(app_name: str, deployment_name: str, description: dict[str, Any]) -> None:
    """Called by a generator replica once its backend has loaded: what /health shows about the backend."""
    _internal_kv_put(_backend_key(app_name, deployment_name), json.dumps(description), overwrite=True, namespace=KV_NAMESPACE)


@dataclass(frozen=True)
class GeneratorReplicas:
    """What Serve says about the generator deployment."""

    ready: int
    starting: int
    deployment_status: str
    backend: dict[str, Any] = field(default_factory=dict)  # as the last loaded replica published it
    error: str | None = None  # why the replicas failed to start (the exception line of Serve's message)

    @property
    def failed(self) -> bool:
        """No replica can generate and Serve gave up starting them (a load error, not a slow controller)."""
        return not self.ready and self.deployment_status in FAILED_STATUSES

    @property
    def status(self) -> str:
        """healthy (a replica can generate), loading (one is starting) or unhealthy."""
        if self.ready:
            return "healthy"
        return "unhealthy" if self.failed or not self.starting else "loading"

    def to_dict(self) -> dict[str, int | str]:
        return {"ready": self.ready, "starting": self.starting, "deployment_status": self.deployment_status}


def _exception_line(message: str) -> str | None:
    """The last line of a Serve status message, which names the exception of a failed constructor."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[-1][:500] if lines else None


UNKNOWN = GeneratorReplicas(ready=0, starting=0, deployment_status="UNKNOWN")


def _lookup(app_name: str, deployment_name: str) -> GeneratorReplicas:
    application = serve.status().applications.get(app_name)
    deployment = application.deployments.get(deployment_name) if application else None
    if deployment is None:
        return UNKNOWN
    states = {str(getattr(state, "value", state)): count for state, count in deployment.replica_states.items()}
    starting = sum(states.get(state, 0) for state in ("STARTING", "UPDATING", "RECOVERING"))
    published = _internal_kv_get(_backend_key(app_name, deployment_name), namespace=KV_NAMESPACE)
    status = str(getattr(deployment.status, "value", deployment.status))
    error = _exception_line(deployment.message) if status in FAILED_STATUSES else None
    return GeneratorReplicas(states.get("RUNNING", 0), starting, status, json.loads(published) if published else {}, error)


class GeneratorWatch:
    """The generator deployment's replica counts, answered within `timeout_s`."""

    def __init__(self, app_name: str, deployment_name: str, timeout_s: float) -> None:
        self._app_name = app_name
        self._deployment_name = deployment_name
        self._timeout_s = timeout_s
        self._latest = UNKNOWN
        self._latest_at = float("-inf")
        self._lookup: asyncio.Future | None = None

    async def replicas(self) -> GeneratorReplicas:
        """A fresh answer, the one of the last `CACHE_S`, or UNKNOWN if Serve did not answer in time."""
        if time.monotonic() - self._latest_at < CACHE_S:
            return self._latest
        if self._lookup is None or self._lookup.done():
            self._lookup = asyncio.ensure_future(asyncio.to_thread(_lookup, self._app_name, self._deployment_name))
        try:
            self._latest = await asyncio.wait_for(asyncio.shield(self._lookup), self._timeout_s)
        except Exception as error:  # the controller is slow or gone: say so rather than wait
            logger.warning("Serve status of %s unavailable: %r", self._deployment_name, error)
            return UNKNOWN
        self._latest_at = time.monotonic()
        return self._latest
