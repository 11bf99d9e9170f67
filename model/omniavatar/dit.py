"""The OmniAvatar DiT: diffusers' Wan transformer plus OmniAvatar's audio conditioning (spec §3).

`OmniAvatarTransformer` is diffusers' `WanTransformer3DModel` with a 33-channel patch embedding
([noisy latent 16 | reference latent 16 | mask 1]) and two modules under the upstream parameter names:
`audio_proj` (AudioPack: 4 audio frames -> one latent frame, LayerNorm) and `audio_cond_projs` (one Linear
per audio block). Before blocks 2 .. num_layers // 2 a forward pre-hook adds projection `l - 2` of the
packed audio to every token of each latent frame. Everything else is diffusers' code.
"""

from __future__ import annotations

import functools

import torch
from diffusers import WanTransformer3DModel
from diffusers.configuration_utils import register_to_config
from torch import nn

__all__ = ["AudioPack", "Float64Timesteps", "OmniAvatarTransformer"]


class AudioPack(nn.Module):
    """Packs `group` consecutive audio frames into one latent frame: (B, L, C) -> (B, T, hidden), L = 4T - 3.

    The first frame is repeated `group - 1` times in front (it stands alone in the VAE's causal grouping),
    then each group of `group` frames is concatenated frame-major, feature-minor and projected (spec §3.5).
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

    Replaces diffusers' float32 `Timesteps` so the embedding rounds exactly as upstream's (spec §3.3 step 1).
    """

    def __init__(self, num_channels: int):
        super().__init__()
        self.num_channels = num_channels

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        exponent = torch.arange(half, dtype=torch.float64, device=timesteps.device) / half
        angles = timesteps.to(torch.float64)[:, None] * torch.pow(10000.0, -exponent)[None]  # (B, half)
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1).to(timesteps.dtype)  # (B, 2 * half)


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

        # audio: one projection per audio block, blocks 2 .. num_layers // 2
        self.audio_layers = tuple(range(2, num_layers // 2 + 1))
        self.audio_proj = AudioPack(audio_dim, audio_hidden_size, audio_group)
        self.audio_cond_projs = nn.ModuleList(nn.Linear(audio_hidden_size, inner_dim) for _ in self.audio_layers)
        self._audio_tokens: list[torch.Tensor] | None = None
        for k, layer in enumerate(self.audio_layers):
            self.blocks[layer].register_forward_pre_hook(functools.partial(self._add_audio, k))

    def _add_audio(self, k: int, block: nn.Module, args: tuple) -> tuple:
        """Pre-hook of audio block `k + 2`: hidden_states += audio projection k of each token's latent frame."""
        hidden_states, *rest = args  # (B, N, D), N = T * (h/2) * (w/2), frame-major
        audio = self._audio_tokens[k]  # (B, T, D)
        hidden_states = (hidden_states.unflatten(1, (audio.shape[1], -1)) + audio[:, :, None]).flatten(1, 2)
        return (hidden_states, *rest)

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        audio: torch.Tensor,
        return_dict: bool = False,
    ):
        """Predict the flow velocity for one segment.

        Args:
            hidden_states: (B, 33, T, h, w) = [noisy latent | reference latent | mask], model dtype.
            timestep: (B,) flow-matching timestep in [0, 1000]; cast to the model dtype before the sinusoid as
                upstream does (in bf16, 995.93 becomes 996).
            encoder_hidden_states: (B, text_len, text_dim) text context; padded rows are zero.
            audio: (B, L, audio_dim) audio window with L = 4T - 3 (zeros for "no audio").

        Returns:
            A tuple whose first element is the velocity (B, 16, T, h, w) (or `Transformer2DModelOutput`).
        """
        num_frames = hidden_states.shape[2]
        group = self.config.audio_group
        expected = group * num_frames - (group - 1)
        if audio.shape[1] != expected:
            raise ValueError(
                f"audio window has {audio.shape[1]} rows, expected {expected} for {num_frames} latent frames"
            )
        packed = self.audio_proj(audio.to(self.dtype))  # (B, T, hidden)
        self._audio_tokens = [proj(packed) for proj in self.audio_cond_projs]  # P x (B, T, D)
        try:
            return super().forward(
                hidden_states,
                timestep.to(self.dtype),
                encoder_hidden_states.to(self.dtype),
                return_dict=return_dict,
            )
        finally:
            self._audio_tokens = None
