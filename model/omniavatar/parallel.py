"""Several processes (ranks) running one request together: the layout, the process groups and the lock-step rules.

`options.parallel: {ulysses: U, cfg: C}` runs a replica over W = U x C ranks. Rank r is guidance rank r // U and
sequence rank r % U: the C guidance groups split the DiT passes of a step (pass i runs on guidance rank i % C),
and inside each, the U sequence ranks split the tokens (`ulysses.py`). Everything else (prompt, audio and
image encoding, noise, scheduler, VAE) runs identically on every rank, so every rank holds the same latents
and a seed gives the same video on 1 or W ranks up to numerics.

Ranks meet with torch.distributed (NCCL on CUDA, gloo on the CPU) through the torchrun variables
`MASTER_ADDR`, `MASTER_PORT`, `RANK`, `WORLD_SIZE`. Every collective has `timeout_s`, so a dead or stalled
rank ends the others' work with an error instead of a hang. Cancellation is agreed: each checkpoint is an
all-reduce of the ranks' cancel flags, so every rank stops at the same step.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from model.backend import CancelToken
from model.errors import GenerationCancelled

__all__ = ["CollectiveCancel", "ParallelGroups", "ParallelLayout", "run_passes"]


@dataclass(frozen=True)
class ParallelLayout:
    """How many ranks split the tokens (`ulysses`) and the guidance passes (`cfg`) of one replica."""

    ulysses: int = 1
    cfg: int = 1
    timeout_s: float = 120.0  # the longest any collective waits for the other ranks

    @property
    def world_size(self) -> int:
        return self.ulysses * self.cfg

    @classmethod
    def from_dict(cls, value: Any) -> ParallelLayout:
        """Parse `options.parallel` ({ulysses, cfg, timeout_s}), raising ValueError naming a bad key."""
        if value is None:
            return cls()
        if not isinstance(value, dict) or set(value) - {"ulysses", "cfg", "timeout_s"}:
            raise ValueError(f"options.parallel must be {{ulysses: N, cfg: 1 | 2, timeout_s: S}}, got {value!r}")
        ulysses, cfg = value.get("ulysses", 1), value.get("cfg", 1)
        if isinstance(ulysses, bool) or not isinstance(ulysses, int) or ulysses < 1:
            raise ValueError(f"options.parallel.ulysses must be a whole number >= 1, got {ulysses!r}")
        if cfg not in (1, 2) or isinstance(cfg, bool):
            raise ValueError(f"options.parallel.cfg must be 1 or 2, got {cfg!r}")
        timeout_s = float(value.get("timeout_s", cls.timeout_s))
        if timeout_s <= 0:
            raise ValueError(f"options.parallel.timeout_s must be positive, got {timeout_s!r}")
        return cls(ulysses, cfg, timeout_s)

    def check_heads(self, num_heads: int) -> None:
        """Ulysses gives each rank num_heads / ulysses whole heads."""
        if num_heads % self.ulysses:
            raise ValueError(
                f"options.parallel.ulysses {self.ulysses} must divide the DiT's {num_heads} attention heads"
            )

    def describe(self) -> dict[str, int]:
        return {"world_size": self.world_size, "ulysses": self.ulysses, "cfg": self.cfg}


class ParallelGroups:
    """This process's rank in a `ParallelLayout`, with its sequence group and its guidance group."""

    def __init__(self, layout: ParallelLayout, rank: int, device: torch.device) -> None:
        self.layout = layout
        self.rank = rank
        self.device = device
        self.ulysses_rank = rank % layout.ulysses
        self.cfg_rank = rank // layout.ulysses
        timeout = datetime.timedelta(seconds=layout.timeout_s)
        self.ulysses_group = self.cfg_group = None
        for c in range(layout.cfg):  # every rank creates every group, in the same order
            group = dist.new_group([c * layout.ulysses + u for u in range(layout.ulysses)], timeout=timeout)
            if c == self.cfg_rank:
                self.ulysses_group = group
        for u in range(layout.ulysses):
            group = dist.new_group([c * layout.ulysses + u for c in range(layout.cfg)], timeout=timeout)
            if u == self.ulysses_rank:
                self.cfg_group = group

    @classmethod
    def from_env(cls, layout: ParallelLayout, device: torch.device) -> ParallelGroups:
        """Join the other ranks named by `MASTER_ADDR`, `MASTER_PORT`, `RANK` and `WORLD_SIZE` (torchrun's)."""
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE") if k not in os.environ]
        if missing:
            raise RuntimeError(f"options.parallel asks for {layout.world_size} ranks but {missing} are not set")
        world = int(os.environ["WORLD_SIZE"])
        if world != layout.world_size:
            raise RuntimeError(f"WORLD_SIZE is {world} but options.parallel needs {layout.world_size} ranks")
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if not dist.is_initialized():
            dist.init_process_group(
                "nccl" if device.type == "cuda" else "gloo",
                rank=int(os.environ["RANK"]),
                world_size=world,
                timeout=datetime.timedelta(seconds=layout.timeout_s),
                device_id=device if device.type == "cuda" else None,
            )
        return cls(layout, dist.get_rank(), device)

    def all_cancelled(self, cancelled: bool) -> bool:
        """True on every rank when any rank's flag is set (one all-reduce over all ranks)."""
        flag = torch.tensor([int(cancelled)], dtype=torch.int32, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def describe(self) -> dict[str, Any]:
        backend = dist.get_backend() if dist.is_initialized() else None
        return {**self.layout.describe(), "rank": self.rank, "backend": backend, "timeout_s": self.layout.timeout_s}

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


class CollectiveCancel(CancelToken):
    """A CancelToken whose checkpoint is agreed by every rank: all stop at the same checkpoint.

    Every rank must call `checkpoint` the same number of times. `finish` is the last agreement of a request;
    `abandon` stands in for the next agreement when this rank stops between two (its reader went away), so
    the others stop there too instead of waiting for the timeout.
    """

    def __init__(self, local: CancelToken, groups: ParallelGroups) -> None:
        super().__init__()
        self._local = local
        self._groups = groups

    @property
    def cancelled(self) -> bool:
        return self._local.cancelled

    def cancel(self) -> None:
        self._local.cancel()

    def checkpoint(self) -> None:
        if self._groups.all_cancelled(self._local.cancelled):
            raise GenerationCancelled()

    def finish(self) -> None:
        self.checkpoint()

    def abandon(self) -> None:
        self._groups.all_cancelled(True)


Velocity = Callable[[int], torch.Tensor]  # pass index -> (1, 16, T, h, w)


def run_passes(velocity: Velocity, passes: int, groups: ParallelGroups | None, like: torch.Tensor) -> list[torch.Tensor]:
    """The velocities of a step's guidance passes, in order; with a guidance group of C ranks, pass i runs on
    guidance rank i % C and the results are all-gathered (round by round), so every rank gets them all."""
    if groups is None or groups.layout.cfg == 1:
        return [velocity(i) for i in range(passes)]
    cfg = groups.layout.cfg
    out: list[torch.Tensor] = []
    for first in range(0, passes, cfg):
        mine = first + groups.cfg_rank
        local = velocity(mine).contiguous() if mine < passes else torch.zeros_like(like)
        gathered = [torch.empty_like(local) for _ in range(cfg)]
        dist.all_gather(gathered, local, group=groups.cfg_group)
        out.extend(gathered[: passes - first])
    return out
