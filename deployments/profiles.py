"""Profiles: one service, several generator deployments (e.g. `quality` and `fast`), each with its own model
config, replicas and autoscaling. A request names its profile in the `profile` field; the ingress sends it to
that profile's generators (through the StreamStore, which calls them). A serve config without profiles serves one, DEFAULT_PROFILE, from AvatarGenerator.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ray.serve.handle import DeploymentHandle

from deployments.health import GeneratorReplicas, GeneratorWatch
from model.config import ModelConfig
from model.request import Profile

GENERATOR = "AvatarGenerator"  # the default profile's deployment; another profile's is AvatarGenerator-<name>
PROFILE_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"


def generator_name(profile: str | None) -> str:
    """The generator deployment of a profile; None: the default profile."""
    return GENERATOR if profile is None else f"{GENERATOR}-{profile}"


@dataclass(frozen=True)
class ServedProfile:
    """One profile of the application: its name, its generator deployment and the model config it serves."""

    name: str
    generator: DeploymentHandle
    config: ModelConfig


def combined_status(states: Sequence[GeneratorReplicas]) -> str:
    """healthy when every profile can generate, unhealthy when one cannot and will not, else loading."""
    statuses = {state.status for state in states}
    if statuses == {"healthy"}:
        return "healthy"
    return "unhealthy" if "unhealthy" in statuses else "loading"


class ProfileRouter:
    """The ingress's view of the profiles: each one's streaming handle, Serve status and request defaults.
    The first profile is the default, for requests that name none."""

    def __init__(self, profiles: Sequence[ServedProfile], health_timeout_s: float) -> None:
        self.default = profiles[0]
        self._profiles = {profile.name: profile for profile in profiles}
        self._watches = {
            p.name: GeneratorWatch(p.generator.app_name, p.generator.deployment_name, health_timeout_s) for p in profiles
        }
        self.request_profiles = tuple(Profile(p.name, p.config.generation, p.config.planning.fps) for p in profiles)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._profiles)

    def config(self, name: str) -> ModelConfig:
        return self._profiles[name].config

    async def replicas(self, name: str) -> GeneratorReplicas:
        return await self._watches[name].replicas()

    async def all_replicas(self) -> dict[str, GeneratorReplicas]:
        states = await asyncio.gather(*(watch.replicas() for watch in self._watches.values()))
        return dict(zip(self._watches, states))

    def describe(self, states: dict[str, GeneratorReplicas]) -> dict[str, dict[str, Any]]:
        """/health's `profiles`: each profile's state, backend and request defaults."""
        return {
            name: {
                "status": state.status,
                "model_loaded": state.ready > 0,
                "backend": self._profiles[name].config.backend,
                "config": self._profiles[name].config.source,  # a file path: only callers with a key see it
                **state.backend,
                "generators": state.to_dict(),
                "error": state.error,
                "defaults": asdict(self._profiles[name].config.generation),
            }
            for name, state in states.items()
        }
