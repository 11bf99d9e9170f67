"""Load-time speed options of the DiT: attention kernel, regional torch.compile with warm-up, group offload.

`prepare_dit` is what the backend and `bench.gpu_levers` both call on a loaded DiT, so the benchmark measures
the service's own set-up.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from diffusers.hooks import apply_group_offloading

from model.config import PlanConfig
from model.omniavatar.attention import attention_backend_for, set_attention
from model.omniavatar.dit import OmniAvatarTransformer
from model.plan import frames_per_segment

__all__ = ["DitSetup", "bucket_latent_shapes", "compile_blocks", "offload_blocks", "prepare_dit", "warm_up_dit"]

logger = logging.getLogger(__name__)

SPATIAL, TEMPORAL = 8, 4  # the VAE's strides


@dataclass(frozen=True)
class DitSetup:
    """What `prepare_dit` did, for /health and the benchmark."""

    attention: str  # the resolved backend
    compiled: bool
    offload: bool


def bucket_latent_shapes(planning: PlanConfig) -> tuple[tuple[int, int, int], ...]:
    """The latent (T, h, w) of a segment in each configured bucket: the shapes every request will use."""
    shapes = []
    for height, width in planning.buckets:
        frames = frames_per_segment(planning.max_tokens, height, width)
        shape = ((frames + TEMPORAL - 1) // TEMPORAL, height // SPATIAL, width // SPATIAL)
        if shape not in shapes:
            shapes.append(shape)
    return tuple(shapes)


def compile_blocks(dit: OmniAvatarTransformer, backend: str = "inductor") -> None:
    """Regional compilation: each transformer block compiled on its own (one graph reused by every block),
    with static shapes, so a bucket's shape compiles once and the rest of the forward stays eager."""
    for block in dit.blocks:
        block.compile(backend=backend, dynamic=False, fullgraph=False)


def offload_blocks(dit: OmniAvatarTransformer, device: torch.device) -> None:
    """Keep the DiT in host memory and move one block at a time to `device`, prefetching the next on a
    CUDA stream (diffusers' group offloading); the DiT must have been loaded on the CPU."""
    use_stream = device.type == "cuda"
    apply_group_offloading(
        dit, onload_device=device, offload_device=torch.device("cpu"), offload_type="block_level",
        num_blocks_per_group=1, use_stream=use_stream, record_stream=use_stream,
    )  # fmt: skip


@torch.inference_mode()
def warm_up_dit(dit: OmniAvatarTransformer, shapes: Iterable[tuple[int, int, int]], context: torch.Tensor,
                device: torch.device, dtype: torch.dtype, text_kv: bool = False) -> None:  # fmt: skip
    """One forward at each latent (T, h, w) in `shapes`, with the text as requests pass it (context or its
    cached keys/values): compiles the blocks for each shape, or just picks kernels when not compiled."""
    config = dit.config
    text = dit.text_kv(context) if text_kv else context
    for frames, height, width in shapes:
        x = torch.zeros(1, config.in_channels, frames, height, width, device=device, dtype=dtype)
        audio = torch.zeros(1, config.audio_group * (frames - 1) + 1, config.audio_dim, device=device, dtype=dtype)
        logger.info("warming the DiT up at latent shape %s", (frames, height, width))
        dit(x, torch.tensor([1000.0], device=device), text, audio)


def prepare_dit(
    dit: OmniAvatarTransformer,
    device: torch.device,
    attention: str = "native",
    compile: bool = False,
    offload: bool = False,
    compile_backend: str = "inductor",
) -> DitSetup:
    """Apply the speed options to a loaded DiT (then, with `compile`, call `warm_up_dit` at every shape)."""
    resolved = attention_backend_for(attention, device)
    set_attention(dit, resolved)
    if offload:
        offload_blocks(dit, device)
    if compile:
        compile_blocks(dit, compile_backend)
    return DitSetup(resolved, compile, offload)
