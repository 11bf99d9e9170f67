"""/health without the generators' request queue: their replica counts come from Serve's own status.

A generator replica is RUNNING in Serve's status only once its backend has loaded and warmed up (its
async __init__ returned), so the count of RUNNING replicas is the count of replicas that can generate.
Concurrent calls share one lookup, and an answer is reused for `CACHE_S`, so a flood of /health calls
costs the Serve controller one status call per `CACHE_S`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from ray import serve

logger = logging.getLogger("ray.serve")
CACHE_S = 0.5
FAILED_STATUSES = ("DEPLOY_FAILED", "UNHEALTHY")


@dataclass(frozen=True)
class GeneratorReplicas:
    """What Serve says about the generator deployment."""

    ready: int
    starting: int
    deployment_status: str

    @property
    def status(self) -> str:
        """healthy (a replica can generate), loading (one is starting) or unhealthy."""
        if self.ready:
            return "healthy"
        if self.starting and self.deployment_status not in FAILED_STATUSES:
            return "loading"
        return "unhealthy"

    def to_dict(self) -> dict[str, int | str]:
        return {"ready": self.ready, "starting": self.starting, "deployment_status": self.deployment_status}


UNKNOWN = GeneratorReplicas(ready=0, starting=0, deployment_status="UNKNOWN")


def _lookup(app_name: str, deployment_name: str) -> GeneratorReplicas:
    application = serve.status().applications.get(app_name)
    deployment = application.deployments.get(deployment_name) if application else None
    if deployment is None:
        return UNKNOWN
    states = {str(getattr(state, "value", state)): count for state, count in deployment.replica_states.items()}
    starting = sum(states.get(state, 0) for state in ("STARTING", "UPDATING", "RECOVERING"))
    return GeneratorReplicas(states.get("RUNNING", 0), starting, str(getattr(deployment.status, "value", deployment.status)))


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
