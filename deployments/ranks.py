"""The further ranks of a generator replica that spans several devices (`options.parallel` in the model config).

The replica reserves one placement-group bundle per rank (`placement_group_bundles`, STRICT_PACK: one node);
it is rank 0 in bundle 0 and starts one `RankWorker` actor in each further bundle. Every rank loads the same
backend and meets the others through torch.distributed (rank 0's address and a free port); for each job, every
worker runs the same segment loop as the replica, in lock-step through the backend's collectives, and drops
the frames. The workers are the replica's children: they die with it, and a dead or failed worker fails the
replica's health check, so Serve replaces the whole replica.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from typing import Any

import ray
from ray import serve
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import get_current_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from model.backend import AvatarBackend, CancelToken, backend_class
from model.config import ModelConfig
from model.errors import GenerationCancelled, RequestError
from model.plan import SegmentPlan
from model.request import GenerateRequest

__all__ = ["RankGroup", "RankWorker"]

RANK_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")


def _rank_env(address: str, port: int, rank: int, world: int) -> dict[str, str]:
    return dict(zip(RANK_ENV, (address, str(port), str(rank), str(world))))


def _free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


@ray.remote(max_concurrency=2)  # a health ping is answered while a job runs
class RankWorker:
    """Rank r >= 1 of a replica: the same backend, the same loop, no output."""

    def __init__(self, config: ModelConfig, env: dict[str, str], backend_kwargs: dict[str, Any]) -> None:
        os.environ.update(env)
        self._config = config
        self._backend_kwargs = backend_kwargs
        self._backend: AvatarBackend | None = None
        self._one_job = threading.Lock()

    def load(self) -> dict[str, Any]:
        """Load and warm up (meeting the other ranks on the way); returns where this rank runs."""
        self._backend = backend_class(self._config.backend)(self._config, **self._backend_kwargs)
        self._backend.warm_up()
        return {"rank": int(os.environ["RANK"]), "node": ray.util.get_node_ip_address(),
                "accelerators": ray.get_runtime_context().get_accelerator_ids()}  # fmt: skip

    def generate(self, request: GenerateRequest, plan: SegmentPlan) -> str:
        """Run one job to its end (or to the cancellation every rank agreed on): completed | cancelled."""
        with self._one_job:
            try:
                for _ in self._backend.generate(request, plan, CancelToken(), lambda *_: None):
                    pass
            except GenerationCancelled:
                return "cancelled"
            return "completed"


class RankGroup:
    """The replica's rank workers: started with the replica, one job at a time, checked by its health check."""

    def __init__(self, layout: Any, workers: list, loading: list) -> None:
        self.layout = layout
        self._workers = workers
        self._loading = loading
        self._ranks: list[dict[str, Any]] = []
        self._jobs: list = []
        self.failure: str | None = None

    @classmethod
    def start(cls, config: ModelConfig, backend_kwargs: dict[str, Any]) -> RankGroup | None:
        """With `options.parallel` over more than one rank: point this process (rank 0) at itself and start the
        other ranks in the replica's further bundles, each building the backend with `backend_kwargs` (as rank 0
        does); None with one rank."""
        if not config.options.get("parallel"):
            return None
        from model.omniavatar.parallel import ParallelLayout  # torch, only for a backend that runs in parallel

        layout = ParallelLayout.from_dict(config.options["parallel"])
        world = layout.world_size
        if world == 1:
            return None
        group = get_current_placement_group()
        bundles = group.bundle_specs if group is not None else []
        if len(bundles) < world:
            raise RuntimeError(
                f"options.parallel needs {world} ranks, so AvatarGenerator needs placement_group_bundles with "
                f"{world} bundles (one per rank, placement_group_strategy STRICT_PACK); it has {len(bundles)}"
            )
        address = ray.util.get_node_ip_address()
        port = _free_port(address)
        replica = serve.get_replica_context()
        prefix = f"{replica.app_name}:{replica.replica_id.unique_id}"
        os.environ.update(_rank_env(address, port, 0, world))
        workers = [
            RankWorker.options(
                name=f"{prefix}:rank{rank}",  # findable by operators (and tests) per replica
                num_cpus=bundles[rank].get("CPU", 0),
                num_gpus=bundles[rank].get("GPU", 0),
                scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=rank),
            ).remote(config, _rank_env(address, port, rank, world), backend_kwargs)
            for rank in range(1, world)
        ]
        return cls(layout, workers, [worker.load.remote() for worker in workers])

    async def loaded(self, timeout_s: float) -> None:
        """Wait for every worker's load (rank 0 has loaded: the ranks met in its constructor)."""
        try:
            self._ranks = await asyncio.wait_for(asyncio.gather(*self._loading), timeout_s)
        except asyncio.TimeoutError:
            raise RuntimeError(f"the rank workers did not load within {timeout_s:g} s") from None

    def submit(self, request: GenerateRequest, plan: SegmentPlan) -> None:
        """Start the job on every worker (rank 0, the replica, runs it itself); refused once the ranks failed."""
        if self.failure is not None:
            raise RuntimeError(f"this replica is being replaced: {self.failure}")
        self._jobs = [worker.generate.remote(request, plan) for worker in self._workers]

    def failed(self, error: BaseException) -> None:
        """Rank 0's job failed: unless every rank refused the request alike, the ranks' collectives are broken."""
        if not isinstance(error, RequestError):
            self.failure = f"a parallel generation failed: {type(error).__name__}: {str(error)[:300]}"

    async def check(self, timeout_s: float) -> None:
        """Raise when the ranks can no longer generate together: a failed job, or a worker that died."""
        if self.failure is not None:
            raise RuntimeError(self.failure)
        for rank, worker in enumerate(self._workers, start=1):
            try:
                await asyncio.wait_for(worker.__ray_ready__.remote(), timeout_s)
            except (RayActorError, GetTimeoutError, asyncio.TimeoutError) as error:
                self.failure = f"rank {rank} is gone or not answering: {type(error).__name__}"
                raise RuntimeError(self.failure) from None

    def describe(self) -> dict[str, Any]:
        """The layout and where each rank runs (rank 0: this replica)."""
        here = {"rank": 0, "node": ray.util.get_node_ip_address(), "accelerators": ray.get_runtime_context().get_accelerator_ids()}
        return {**self.layout.describe(), "ranks": [here, *self._ranks]}
