"""Per-step time of one DiT rank against two (sequence parallel, guidance parallel), and what the ranks send.

    python -m bench.sequence_parallel                                  # CPU: dit-heavy, 1 thread a rank, gloo
    python -m bench.sequence_parallel --model 14b --device cuda --ranks 4 --frames 27 --height 400 --width 720

Every row runs the service's own sampler (`sampling.denoise_segment`, 2 guided passes a step) on random
weights built by `bench.gpu_levers.random_dit`, in `--ranks` processes meeting over torch.distributed (gloo on
the CPU, NCCL on CUDA), and prints the fastest of `--repeat` timings of `--steps` steps. The one-rank row runs in
this process. "MB sent/step" is what one rank hands to its collectives per step, counted at the calls:
all-to-all (the share for the other ranks), all-gather (its chunk, to each other rank) and all-reduce.
On a 2-core machine shared with other work, two ranks of one thread each compete for the cores.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bench.gpu_levers import DIT_HEAVY, TEXT_LEN, random_dit
from model.omniavatar.config import CONFIGS
from model.omniavatar.guidance import Guidance
from model.omniavatar.parallel import ParallelGroups, ParallelLayout
from model.omniavatar.sampling import Conditions, denoise_segment
from model.omniavatar.tiny import TINY
from model.omniavatar.ulysses import SequenceParallel

MODELS = {"tiny": TINY, "dit-heavy": DIT_HEAVY, "1.3b": CONFIGS["1.3b"], "14b": CONFIGS["14b"]}


@dataclass(frozen=True)
class Setup:
    model: str
    device: str
    dtype: torch.dtype
    shape: tuple[int, int, int]  # latent (T, h, w)
    steps: int
    repeat: int
    threads: int


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="dit-heavy")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--ranks", type=int, default=2, help="ranks of the parallel rows (GPUs with --device cuda)")
    p.add_argument("--frames", type=int, default=9, help="latent frames per segment")
    p.add_argument("--height", type=int, default=96, help="frame height in pixels (latent: / 8)")
    p.add_argument("--width", type=int, default=144, help="frame width in pixels (latent: / 8)")
    p.add_argument("--steps", type=int, default=2, help="steps timed per row")
    p.add_argument("--repeat", type=int, default=2, help="timings per row; the fastest is kept")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per rank")
    return p.parse_args(argv)


class Traffic:
    """Bytes this rank hands to collectives, counted by wrapping torch.distributed's calls."""

    def __init__(self) -> None:
        self.bytes = 0
        self._originals: dict[str, Callable] = {}

    def __enter__(self) -> Traffic:
        def counted(name: str, size: Callable[..., int]) -> None:
            original = self._originals[name] = getattr(dist, name)

            def call(*args, **kwargs):
                self.bytes += size(*args, **kwargs)
                return original(*args, **kwargs)

            setattr(dist, name, call)

        def world(group) -> int:
            return dist.get_world_size(group)

        nbytes = lambda t: t.numel() * t.element_size()  # noqa: E731
        counted("all_to_all_single", lambda out, inp, group=None, **_: nbytes(inp) * (world(group) - 1) // world(group))
        counted("all_gather", lambda outs, t, group=None, **_: nbytes(t) * (world(group) - 1))
        counted("all_reduce", lambda t, op=None, group=None, **_: nbytes(t))
        return self

    def __exit__(self, *_) -> None:
        for name, original in self._originals.items():
            setattr(dist, name, original)


def segment_inputs(setup: Setup, device: torch.device):
    config = MODELS[setup.model]
    frames, h, w = setup.shape
    g = torch.Generator().manual_seed(0)
    rand = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=setup.dtype)  # noqa: E731
    conditions = Conditions(Guidance(4.5), rand(1, TEXT_LEN, config.text_dim), rand(1, TEXT_LEN, config.text_dim), 0, setup.steps)
    latents = rand(1, 16, frames, h, w)
    return conditions, latents, rand(1, 17, frames, h, w), rand(1, 4 * frames - 3, config.audio_dim), latents[:, :, :1].clone()


def time_steps(setup: Setup, device: torch.device, groups: ParallelGroups | None) -> tuple[float, int]:
    """(fastest seconds per step, bytes sent per step) of the sampler on this rank."""
    torch.set_num_threads(setup.threads)
    dit = random_dit(MODELS[setup.model], setup.dtype, device)
    if groups is not None and groups.layout.ulysses > 1:
        SequenceParallel(groups.ulysses_group, groups.layout.ulysses, groups.ulysses_rank).install(dit)
    conditions, latents, y, window, held = segment_inputs(setup, device)
    run = lambda: denoise_segment(dit, conditions, latents.clone(), y, window, held, groups=groups)  # noqa: E731
    run()  # warm-up
    best, sent = float("inf"), 0
    for _ in range(setup.repeat):
        if groups is not None:
            dist.barrier()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        with Traffic() as traffic:
            start = time.perf_counter()
            run()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - start)
        sent = traffic.bytes
    return best / setup.steps, sent // setup.steps


def _rank(rank: int, setup: Setup, layout: ParallelLayout, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(layout.world_size))
    device = torch.device(f"cuda:{rank}" if setup.device == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    groups = ParallelGroups.from_env(layout, device)
    seconds, sent = time_steps(setup, device, groups)
    if rank == 0:
        Path(out).write_text(f"{seconds} {sent}")
    groups.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def parallel_row(setup: Setup, layout: ParallelLayout, out: Path) -> tuple[float, int]:
    mp.start_processes(_rank, args=(setup, layout, _free_port(), str(out)), nprocs=layout.world_size, start_method="spawn")
    seconds, sent = out.read_text().split()
    return float(seconds), int(sent)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = MODELS[args.model]
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    setup = Setup(args.model, args.device, dtype, (args.frames, args.height // 8, args.width // 8), args.steps, args.repeat, args.threads)
    tokens = args.frames * (args.height // 16) * (args.width // 16)
    print(f"{args.model} (dim {config.dim}, {config.num_layers} blocks, {config.num_heads} heads) on {args.device}, "
          f"{tokens} tokens a segment, 2 guided passes a step, {args.steps} steps timed, fastest of {args.repeat}")  # fmt: skip
    device = torch.device(args.device)
    one, _ = time_steps(setup, device, None)
    rows = [("1 rank", 1, one, 0)]
    layouts = [(f"ulysses {args.ranks}", ParallelLayout(ulysses=args.ranks))]
    if args.ranks % 2 == 0:
        layouts.append((f"cfg 2 x ulysses {args.ranks // 2}", ParallelLayout(ulysses=args.ranks // 2, cfg=2)))
    with tempfile.TemporaryDirectory() as folder:
        for name, layout in layouts:
            layout.check_heads(config.num_heads)
            seconds, sent = parallel_row(setup, layout, Path(folder) / "row")
            rows.append((name, layout.world_size, seconds, sent))
    print("| layout | ranks | s/step | speed-up | MB sent/step per rank |")
    print("| --- | --- | --- | --- | --- |")
    for name, ranks, seconds, sent in rows:
        print(f"| {name} | {ranks} | {seconds:.3f} | {one / seconds:.2f}x | {sent / 1e6:.2f} |")


if __name__ == "__main__":
    main()
