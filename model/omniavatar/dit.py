"""The OmniAvatar DiT: diffusers' Wan transformer plus OmniAvatar's audio conditioning.

`OmniAvatarTransformer` is diffusers' `WanTransformer3DModel` with a 33-channel patch embedding
([noisy latent 16 | reference latent 16 | mask 1]) and two modules under the upstream parameter names:
`audio_proj` (AudioPack: 4 audio frames -> one latent frame, LayerNorm) and `audio_cond_projs` (one Linear
per audio block). Before blocks 2 .. num_layers // 2, projection `l - 2` of the packed audio is added to every
token of each latent frame. The blocks, embeddings and head are diffusers' modules, run in diffusers' order;
the forward adds two opt-in savings: TeaCache (`teacache.py`) and the text keys/values computed once per
prompt (`TextKV`), and runs the blocks sequence parallel once `ulysses.SequenceParallel` is installed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import WanTransformer3DModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor
from torch import nn

from model.omniavatar.teacache import TeaCache
from model.omniavatar.ulysses import SequenceParallel, add_frame_audio

__all__ = ["AudioPack", "CachedTextAttnProcessor", "Float64Timesteps", "OmniAvatarTransformer", "TextKV"]


class AudioPack(nn.Module):
    """Packs `group` consecutive audio frames into one latent frame: (B, L, C) -> (B, T, hidden), L = 4T - 3.

    The first frame is repeated `group - 1` times in front (it stands alone in the VAE's causal grouping),
    then each group of `group` frames is concatenated frame-major, feature-minor and projected .
    """

    def __init__(self, in_dim: int, hidden: int, group: int = 4):
        super().__init__()
        self.group = group
        self.proj = nn.Linear(in_dim * group, hidden)
        self.norm_out = nn.LayerNorm(hidden)  # affine, eps 1e-5 as upstream

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        first = audio[:, :1].expand(-1, self.group - 1, -1)
        audio = torch.cat([first, audio], dim=1)  # (B, 4T, C)
        audio = audio.unflatten(1, (-1, self.group)).flatten(2)  # (B, T, 4C): frame-in-group major, feature minor
        return self.norm_out(self.proj(audio))  # (B, T, hidden)


class Float64Timesteps(nn.Module):
    """Wan's sinusoidal timestep embedding [cos | sin], computed in float64 and cast back to the input dtype.

    Replaces diffusers' float32 `Timesteps` so the embedding rounds exactly as upstream's.
    """

    def __init__(self, num_channels: int):
        super().__init__()
        self.num_channels = num_channels

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        exponent = torch.arange(half, dtype=torch.float64, device=timesteps.device) / half
        angles = timesteps.to(torch.float64)[:, None] * torch.pow(10000.0, -exponent)[None]  # (B, half)
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1).to(timesteps.dtype)  # (B, 2 * half)


@dataclass(frozen=True, eq=False)
class TextKV:
    """A prompt's cross-attention keys and values for every block: `kv[l]` = ((B, S, H, d), (B, S, H, d)).

    They depend only on the prompt, so one request computes them once (`OmniAvatarTransformer.text_kv`) and
    passes this object instead of the text context; the result is identical to recomputing them every call.
    """

    kv: tuple[tuple[torch.Tensor, torch.Tensor], ...]


class CachedTextAttnProcessor(WanAttnProcessor):
    """Block `layer`'s cross-attention: diffusers' processor, or the cached keys/values when given a `TextKV`."""

    def __init__(self, layer: int):
        super().__init__()
        self.layer = layer

    def __call__(
        self,
        attn: WanAttention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | TextKV | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if not isinstance(encoder_hidden_states, TextKV):
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        key, value = encoder_hidden_states.kv[self.layer]
        query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        out = dispatch_attention_fn(
            query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, backend=self._attention_backend
        )
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))

    @staticmethod
    def keys_values(attn: WanAttention, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The projections diffusers' processor computes from the embedded text, in the same order."""
        key = attn.norm_k(attn.to_k(context)).unflatten(2, (attn.heads, -1))
        return key, attn.to_v(context).unflatten(2, (attn.heads, -1))


class OmniAvatarTransformer(WanTransformer3DModel):
    """Wan2.1 T2V DiT with OmniAvatar's 33-channel input and per-frame audio injection.

    Args:
        num_attention_heads (`int`): heads; head dim is `attention_head_dim` (128 for the real models).
        in_channels (`int`, defaults to 33): 16 noisy + 16 reference latent channels + 1 mask channel.
        audio_dim (`int`, defaults to 10752): width of one audio-embedding row ((wav2vec2 layers + 2) x hidden).
        audio_hidden_size (`int`, defaults to 32): AudioPack output width.
        audio_group (`int`, defaults to 4): audio frames per latent frame (the VAE's temporal stride).
        Other arguments are `WanTransformer3DModel`'s.
    """

    @register_to_config
    def __init__(
        self,
        patch_size: tuple[int, ...] = (1, 2, 2),
        num_attention_heads: int = 12,
        attention_head_dim: int = 128,
        in_channels: int = 33,
        out_channels: int = 16,
        text_dim: int = 4096,
        freq_dim: int = 256,
        ffn_dim: int = 8960,
        num_layers: int = 30,
        eps: float = 1e-6,
        rope_max_seq_len: int = 1024,
        audio_dim: int = 10752,
        audio_hidden_size: int = 32,
        audio_group: int = 4,
    ) -> None:
        if num_layers < 4:
            raise ValueError(f"OmniAvatar needs num_layers >= 4 so that block 2 receives audio, got {num_layers}")
        super().__init__(
            patch_size=patch_size,
            num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim,
            in_channels=in_channels,
            out_channels=out_channels,
            text_dim=text_dim,
            freq_dim=freq_dim,
            ffn_dim=ffn_dim,
            num_layers=num_layers,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            eps=eps,
            rope_max_seq_len=rope_max_seq_len,
        )
        inner_dim = num_attention_heads * attention_head_dim
        self.condition_embedder.timesteps_proj = Float64Timesteps(freq_dim)
        for layer, block in enumerate(self.blocks):
            block.attn2.set_processor(CachedTextAttnProcessor(layer))

        # audio: one projection per audio block, blocks 2 .. num_layers // 2
        self.audio_layers = tuple(range(2, num_layers // 2 + 1))
        self.audio_proj = AudioPack(audio_dim, audio_hidden_size, audio_group)
        self.audio_cond_projs = nn.ModuleList(nn.Linear(audio_hidden_size, inner_dim) for _ in self.audio_layers)
        self.sequence_parallel: SequenceParallel | None = None  # set by SequenceParallel.install

    def text_kv(self, context: torch.Tensor) -> TextKV:
        """(B, text_len, text_dim) context -> every block's cross-attention keys and values."""
        embedded = self.condition_embedder.text_embedder(context.to(self.dtype))
        return TextKV(tuple(CachedTextAttnProcessor.keys_values(b.attn2, embedded) for b in self.blocks))

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor | TextKV,
        audio: torch.Tensor,
        return_dict: bool = False,
        tea_cache: TeaCache | None = None,
    ):
        """Predict the flow velocity for one segment (diffusers' Wan forward with the audio added).

        Args:
            hidden_states: (B, 33, T, h, w) = [noisy latent | reference latent | mask], model dtype.
            timestep: (B,) flow-matching timestep in [0, 1000]; cast to the model dtype before the sinusoid as
                upstream does (in bf16, 995.93 becomes 996).
            encoder_hidden_states: (B, text_len, text_dim) text context (padded rows zero), or its `TextKV`.
            audio: (B, L, audio_dim) audio window with L = 4T - 3 (zeros for "no audio").
            tea_cache: this guidance branch's TeaCache, which may replace the blocks by its stored residual.

        Returns:
            A tuple whose first element is the velocity (B, 16, T, h, w) (or `Transformer2DModelOutput`).
        """
        batch, _, num_frames, height, width = hidden_states.shape
        group = self.config.audio_group
        expected = group * num_frames - (group - 1)
        if audio.shape[1] != expected:
            raise ValueError(
                f"audio window has {audio.shape[1]} rows, expected {expected} for {num_frames} latent frames"
            )
        p_t, p_h, p_w = self.config.patch_size
        rotary_emb = self.rope(hidden_states)
        tokens = self.patch_embedding(hidden_states).flatten(2).transpose(1, 2).contiguous()  # (B, N, D)
        temb, modulation = self.time_embedding(timestep.to(self.dtype), tokens.dtype)
        if isinstance(encoder_hidden_states, TextKV):
            context = encoder_hidden_states
        else:
            context = self.condition_embedder.text_embedder(encoder_hidden_states.to(self.dtype))
        modulation = modulation.unflatten(1, (6, -1))  # (B, 6, D)

        if tea_cache is None or tea_cache.should_compute(modulation):
            out = self._blocks(tokens, context, modulation, rotary_emb, audio)
            if tea_cache is not None:
                tea_cache.store(tokens, out)
        else:
            out = tea_cache.apply(tokens)

        # output norm, projection, unpatchify (diffusers' head)
        shift, scale = (self.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
        out = (self.norm_out(out.float()) * (1 + scale) + shift).type_as(out)
        out = self.proj_out(out)
        out = out.reshape(batch, num_frames // p_t, height // p_h, width // p_w, p_t, p_h, p_w, -1)
        output = out.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)
        return (output,) if not return_dict else Transformer2DModelOutput(sample=output)

    def time_embedding(self, timestep: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(temb (B, D), modulation (B, 6D)) as diffusers' condition embedder computes them."""
        embedder = self.condition_embedder
        sinusoid = embedder.timesteps_proj(timestep)
        weight_dtype = next(iter(embedder.time_embedder.parameters())).dtype
        if sinusoid.dtype != weight_dtype and weight_dtype != torch.int8:
            sinusoid = sinusoid.to(weight_dtype)
        temb = embedder.time_embedder(sinusoid).to(dtype)
        return temb, embedder.time_proj(embedder.act_fn(temb))

    def _blocks(self, tokens, context, modulation, rotary_emb, audio: torch.Tensor) -> torch.Tensor:
        """Every block, with audio projection `l - 2` of each latent frame added before audio block `l`;
        under sequence parallel on this rank's chunk of the tokens, gathered after the last block."""
        packed = self.audio_proj(audio.to(self.dtype))  # (B, T, hidden)
        parallel = self.sequence_parallel
        if parallel is not None:
            tokens, rotary_emb = parallel.scatter(tokens, rotary_emb, packed.shape[1])
        first = self.audio_layers[0]
        for layer, block in enumerate(self.blocks):
            if layer in self.audio_layers:
                frame_audio = self.audio_cond_projs[layer - first](packed)  # (B, T, D)
                tokens = add_frame_audio(tokens, frame_audio, None if parallel is None else parallel.shard)
            tokens = block(tokens, context, modulation, rotary_emb)
        return tokens if parallel is None else parallel.gather(tokens)
