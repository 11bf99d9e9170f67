"""Sequence parallel (Ulysses) DiT blocks: each of G ranks holds a contiguous G-th of the tokens.

The N tokens after the patch embedding are padded at the end to a multiple of G and split into G chunks of
c = ceil(N / G). Per block, everything but self-attention is per token (modulation, cross-attention on the
replicated text, FFN), so it runs on the chunk. Self-attention projects and normalises q, k, v on the chunk
(the RMS norm spans the heads of one token), rotates them with the chunk's slice of the RoPE table, and an
all-to-all gives each rank all N tokens for H / G heads; the padding is cut off before attention (so it is
never a key, and the result equals one rank's up to rounding, also when G does not divide N), and put back
for the all-to-all home. The audio of latent frame f is added to the tokens of frame f in each chunk: token
j of rank r is global token r·c + j, of frame (r·c + j) // (h·w); padding gets none. After the last block
the chunks are all-gathered and trimmed, and the head runs on the full sequence on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor
from torch import nn

__all__ = ["SequenceParallel", "TokenShard", "UlyssesAttnProcessor", "add_frame_audio"]


@dataclass(frozen=True)
class TokenShard:
    """Rank `rank`'s chunk of `total` tokens split over `world` ranks (frames of `per_frame` tokens each)."""

    total: int
    world: int
    rank: int
    per_frame: int

    @property
    def chunk(self) -> int:
        return -(-self.total // self.world)

    @property
    def start(self) -> int:
        return self.rank * self.chunk

    @property
    def valid(self) -> int:
        """Real (not padding) tokens in this chunk."""
        return max(0, min(self.chunk, self.total - self.start))

    def take(self, x: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """This chunk of dim 1 of a (B, N, ...) tensor, padded with `fill` past the end."""
        pad = self.chunk * self.world - self.total
        if pad:
            x = torch.cat([x, x.new_full((x.shape[0], pad, *x.shape[2:]), fill)], dim=1)
        return x[:, self.start : self.start + self.chunk]

    def frame_of_token(self, device: torch.device) -> torch.Tensor:
        """(chunk,) latent frame of each token of the chunk (padding clamped to the last frame)."""
        index = torch.arange(self.start, self.start + self.chunk, device=device)
        return (index // self.per_frame).clamp(max=self.total // self.per_frame - 1)


def add_frame_audio(tokens: torch.Tensor, frame_audio: torch.Tensor, shard: TokenShard | None) -> torch.Tensor:
    """Add latent frame f's audio (B, T, D) to every token of frame f; with a shard, to the chunk's tokens."""
    if shard is None:
        return (tokens.unflatten(1, (frame_audio.shape[1], -1)) + frame_audio[:, :, None]).flatten(1, 2)
    per_token = frame_audio[:, shard.frame_of_token(tokens.device)]  # (B, chunk, D)
    per_token[:, shard.valid :] = 0
    return tokens + per_token


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's RoPE on (B, n, H, d), the operations of diffusers' processor."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class SequenceParallel:
    """The DiT's sequence-parallel state: its group, and the shard of the forward that is running."""

    def __init__(self, group: dist.ProcessGroup | None, world: int, rank: int) -> None:
        self.group = group
        self.world = world
        self.rank = rank
        self.shard: TokenShard | None = None

    def install(self, dit: nn.Module) -> None:
        """Route every block's self-attention through Ulysses (keeping the chosen attention kernel)."""
        for block in dit.blocks:
            backend = getattr(block.attn1.processor, "_attention_backend", None)
            processor = UlyssesAttnProcessor(self)
            processor._attention_backend = backend
            block.attn1.set_processor(processor)
        dit.sequence_parallel = self

    def scatter(
        self, tokens: torch.Tensor, rotary_emb: tuple[torch.Tensor, torch.Tensor], frames: int
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """This rank's chunk of the tokens (B, N, D) and of the RoPE table ((1, N, 1, d) cos and sin)."""
        self.shard = TokenShard(tokens.shape[1], self.world, self.rank, tokens.shape[1] // frames)
        cos, sin = rotary_emb
        return self.shard.take(tokens), (self.shard.take(cos, 1.0), self.shard.take(sin, 0.0))

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """Every rank's chunk (B, c, D) -> the full, trimmed sequence (B, N, D) on every rank."""
        chunks = [torch.empty_like(local) for _ in range(self.world)]
        dist.all_gather(chunks, local.contiguous(), group=self.group)
        return torch.cat(chunks, dim=1)[:, : self.shard.total]

    def heads_to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, c, H, d) on each rank -> (B, G·c, H / G, d): all tokens, this rank's heads."""
        b, c, h, d = x.shape
        send = x.reshape(b, c, self.world, h // self.world, d).permute(2, 0, 1, 3, 4).contiguous()
        received = torch.empty_like(send)
        dist.all_to_all_single(received, send, group=self.group)
        return received.permute(1, 0, 2, 3, 4).reshape(b, self.world * c, h // self.world, d)

    def tokens_to_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, G·c, H / G, d) -> (B, c, H, d): this rank's tokens, all heads (inverse of heads_to_tokens)."""
        b, n, h, d = x.shape
        c = n // self.world
        send = x.reshape(b, self.world, c, h, d).permute(1, 0, 2, 3, 4).contiguous()
        received = torch.empty_like(send)
        dist.all_to_all_single(received, send, group=self.group)
        return received.permute(1, 2, 0, 3, 4).reshape(b, c, self.world * h, d)


class UlyssesAttnProcessor(WanAttnProcessor):
    """Self-attention over the sequence-parallel chunks (see the module docstring)."""

    def __init__(self, parallel: SequenceParallel) -> None:
        super().__init__()
        self.parallel = parallel

    def __call__(
        self,
        attn: WanAttention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("UlyssesAttnProcessor runs self-attention only, without a mask")
        sp, total = self.parallel, self.parallel.shard.total
        query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(attn.to_k(hidden_states)).unflatten(2, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query, key = _rotate(query, *rotary_emb), _rotate(key, *rotary_emb)
        query, key, value = (sp.heads_to_tokens(x)[:, :total] for x in (query, key, value))  # padding cut off
        out = dispatch_attention_fn(
            query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, backend=self._attention_backend
        )
        padded = torch.cat([out, out.new_zeros(out.shape[0], sp.shard.chunk * sp.world - total, *out.shape[2:])], 1)
        out = sp.tokens_to_heads(padded).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))
