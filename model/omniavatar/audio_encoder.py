"""The wav2vec2 audio encoder as OmniAvatar uses it: one embedding row per video frame.

The normalised waveform is zero-padded to `num_frames` x (sample_rate / fps) samples; the conv features are
linearly interpolated (align_corners) to exactly `num_frames` steps by a forward hook on the feature encoder
(upstream subclasses Wav2Vec2Model for this, which transformers 5 no longer allows); then the stock model
runs with all hidden states, and each row is [last_hidden_state, hidden_states[0], ..., hidden_states[-1]].
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

__all__ = ["AudioEncoder"]


class AudioEncoder(nn.Module):
    """Waveform (16 kHz mono, lead-in included) -> audio embedding E of shape (num_frames, embed_dim), float32."""

    def __init__(self, model: Wav2Vec2Model, feature_extractor: Wav2Vec2FeatureExtractor, fps: int = 25):
        super().__init__()
        self.model = model
        self.feature_extractor = feature_extractor
        self.fps = fps

    @property
    def sample_rate(self) -> int:
        return int(self.feature_extractor.sampling_rate)

    @property
    def samples_per_frame(self) -> int:
        return self.sample_rate // self.fps

    @property
    def embed_dim(self) -> int:
        """(layers + 2) x hidden: the last layer appears twice, as upstream stacks them."""
        return (self.model.config.num_hidden_layers + 2) * self.model.config.hidden_size

    def normalize(self, samples: np.ndarray) -> np.ndarray:
        """Zero-mean unit-variance over the whole clip, as Wav2Vec2FeatureExtractor does (float32)."""
        values = self.feature_extractor(samples, sampling_rate=self.sample_rate).input_values
        return np.asarray(values, dtype=np.float32).reshape(-1)

    @torch.no_grad()
    def encode(self, samples: np.ndarray, num_frames: int) -> torch.Tensor:
        """Embed a clip.

        Args:
            samples: (N,) float32 mono waveform at `sample_rate`, with the lead-in silence already prepended.
            num_frames: rows wanted (the plan's padded audio frame count S); N must fit in S frames.

        Returns:
            (num_frames, embed_dim) float32 on the model's device.
        """
        values = self.normalize(samples)
        padded_len = num_frames * self.samples_per_frame
        if values.shape[0] > padded_len:
            raise ValueError(
                f"{values.shape[0]} audio samples do not fit in {num_frames} frames ({padded_len} samples)"
            )
        device = self.model.device
        wave = torch.zeros(1, padded_len, dtype=torch.float32, device=device)
        wave[0, : values.shape[0]] = torch.from_numpy(values).to(device)

        def to_frame_rate(module: nn.Module, args: tuple, features: torch.Tensor) -> torch.Tensor:
            # (1, C, N_conv) -> (1, C, num_frames); with N_conv = 2S - 1 this is an exact decimation
            return F.interpolate(features, size=num_frames, mode="linear", align_corners=True)

        hook = self.model.feature_extractor.register_forward_hook(to_frame_rate)
        try:
            out = self.model(wave.to(self.model.dtype), output_hidden_states=True)
        finally:
            hook.remove()
        embedding = torch.cat([out.last_hidden_state, *out.hidden_states], dim=-1)  # (1, S, (layers + 2) * hidden)
        return embedding[0].float()
