"""Sequence and guidance parallel on the tiny model: two gloo ranks in two processes against one process."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from model.backend import CancelToken
from model.config import ModelConfig
from model.omniavatar.parallel import ParallelLayout
from model.omniavatar.ulysses import TokenShard, add_frame_audio
from model.plan import plan_segments
from tests.e2e.server import free_port

from .test_backend import tiny_request

SPAWN_TIMEOUT_S = 240
ODD_BUCKETS = ((48, 48),)  # 3 x 3 tokens per latent frame, 3 latent frames: 27 tokens, odd


@pytest.mark.parametrize("world", [2, 3, 4])
def test_sharded_audio_hook_matches_the_unsharded_one(world):
    """Each rank's chunk with its frames' audio added is the same chunk of the full sequence with the audio
    added (27 tokens of 3 frames: the last chunk is padded, and the padding gets no audio)."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(1, 27, 8, generator=generator)
    frame_audio = torch.randn(1, 3, 8, generator=generator)
    full = add_frame_audio(tokens, frame_audio, None)
    for rank in range(world):
        shard = TokenShard(total=27, world=world, rank=rank, per_frame=9)
        local = add_frame_audio(shard.take(tokens), frame_audio, shard)
        expected = shard.take(full)
        assert torch.equal(local, expected), f"rank {rank}/{world}: sharded audio differs by {(local - expected).abs().max()}"
        assert not local[:, shard.valid :].any(), f"rank {rank}/{world}: padding got audio"


def test_token_shards_cover_the_sequence_once():
    shards = [TokenShard(total=30375, world=4, rank=r, per_frame=1125) for r in range(4)]
    assert [s.chunk for s in shards] == [7594] * 4, f"expected chunks of ceil(30375 / 4), got {[s.chunk for s in shards]}"
    assert sum(s.valid for s in shards) == 30375, f"expected 30375 real tokens, got {sum(s.valid for s in shards)}"


@pytest.mark.parametrize(
    ("value", "message"),
    [({"ulysses": 0}, "ulysses"), ({"cfg": 3}, "cfg must be 1 or 2"), ({"ring": 2}, "options.parallel must be")],
)
def test_bad_layouts_are_named(value, message):
    with pytest.raises(ValueError, match=message):
        ParallelLayout.from_dict(value)


def test_heads_must_divide_by_ulysses():
    with pytest.raises(ValueError, match="must divide the DiT's 2 attention heads"):
        ParallelLayout(ulysses=4).check_heads(2)


def _config(tiny_dirs, parallel: dict | None, buckets=None) -> ModelConfig:
    from model.config import load_model_config

    options = {"base_dir": str(tiny_dirs.base_dir), "omniavatar_dir": str(tiny_dirs.omniavatar_dir),
               "wav2vec_dir": str(tiny_dirs.wav2vec_dir), "parallel": parallel}  # fmt: skip
    config = load_model_config("configs/omniavatar-tiny.yaml", {"options": options})
    return config if buckets is None else replace(config, planning=replace(config.planning, buckets=buckets))


def _rank(rank: int, world: int, cases: list, out_dir: str) -> None:
    """One rank: for each case, join the others on its port, generate, and (rank 0) save the frames."""
    from model.omniavatar.backend import OmniAvatarBackend

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", RANK=str(rank), WORLD_SIZE=str(world))
    for name, config, request, plan, port in cases:
        os.environ["MASTER_PORT"] = str(port)
        backend = OmniAvatarBackend(config)
        frames = [s.frames for s in backend.generate(request, plan, CancelToken(), lambda *a: None)]
        if rank == 0:
            np.save(Path(out_dir) / f"{name}.npy", np.concatenate(frames))
        backend.parallel.close()


def _spawn(world: int, cases: list, out_dir: Path) -> None:
    context = mp.start_processes(_rank, args=(world, cases, str(out_dir)), nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise AssertionError(f"{world} ranks did not finish within {SPAWN_TIMEOUT_S} s")


def test_two_ranks_give_the_one_rank_frames(tiny_dirs, tiny_backend, tiny_config, tmp_path):
    """Ulysses 2 (27 tokens: padded and masked) and guidance parallel cfg 2: the frames of one process within
    1 uint8 level, for the same request and seed."""
    odd = _config(tiny_dirs, None, ODD_BUCKETS)
    request = tiny_request(tiny_config, seconds=0.6)
    cases = {
        "ulysses2_odd": ({"ulysses": 2, "timeout_s": 60}, odd.planning),
        "cfg2": ({"cfg": 2, "timeout_s": 60}, tiny_config.planning),
    }
    spawned = []
    for name, (parallel, planning) in cases.items():
        plan = plan_segments(request, planning)
        config = _config(tiny_dirs, parallel, planning.buckets)
        spawned.append((name, config, request, plan, free_port()))
    odd_plan = spawned[0][3]
    assert odd_plan.height * odd_plan.width // 256 * odd_plan.latent_frames % 2 == 1, "the odd case must have odd tokens"
    _spawn(2, spawned, tmp_path)
    for name, _, _, plan, _ in spawned:
        one = np.concatenate([s.frames for s in tiny_backend.generate(request, plan, CancelToken(), lambda *a: None)])
        two = np.load(tmp_path / f"{name}.npy")
        assert one.shape == two.shape, f"{name}: expected frames {one.shape}, got {two.shape}"
        diff = np.abs(one.astype(int) - two.astype(int)).max()
        assert diff <= 1, f"{name}: expected the one-rank frames within 1 level, got a difference of {diff}"
