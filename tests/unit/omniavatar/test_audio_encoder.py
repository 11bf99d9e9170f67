"""The wav2vec2 audio encoder: embedding width and rows, exact decimation of conv features, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from .helpers import max_diff


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    return (
        0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.05 * rng.standard_normal(t.shape)
    ).astype(np.float32)


def test_embedding_width_rows_and_layer_order(tiny_models):
    encoder = tiny_models.audio_encoder
    hidden, layers = encoder.model.config.hidden_size, encoder.model.config.num_hidden_layers
    samples = speech_like(0.5)  # 8000 samples -> 13 frames at 640 samples per frame
    embedding = encoder.encode(samples, num_frames=21)
    assert embedding.shape == (21, (layers + 2) * hidden), (
        f"expected (21, {(layers + 2) * hidden}), found {tuple(embedding.shape)}"
    )
    assert embedding.dtype == torch.float32, f"expected float32, found {embedding.dtype}"
    # [last_hidden_state, hs[0], ..., hs[layers]]: the last layer appears first and last
    diff = max_diff(embedding[:, :hidden], embedding[:, -hidden:])
    assert diff == 0.0, f"the first and last {hidden} columns must both be the last layer, differ by {diff}"
    assert max_diff(embedding[:, :hidden], embedding[:, hidden : 2 * hidden]) > 1e-3, (
        "hs[0] must differ from the last layer"
    )


def test_conv_features_are_decimated_to_the_frame_rate(tiny_models):
    """With 640·S samples the encoder yields 2S - 1 conv frames; align_corners interpolation keeps every 2nd one."""
    encoder = tiny_models.audio_encoder
    raw, projected = {}, {}
    h1 = encoder.model.feature_extractor.register_forward_hook(lambda m, a, out: raw.__setitem__("x", out.clone()))
    h2 = encoder.model.feature_projection.register_forward_pre_hook(
        lambda m, a: projected.__setitem__("x", a[0].clone())
    )
    try:
        encoder.encode(speech_like(0.4), num_frames=17)
    finally:
        h1.remove()
        h2.remove()
    assert raw["x"].shape[-1] == 2 * 17 - 1, f"expected 33 conv frames for 17 video frames, found {raw['x'].shape[-1]}"
    want = raw["x"][:, :, ::2].transpose(1, 2)  # (1, 17, C)
    diff = max_diff(projected["x"], want)
    assert diff < 1e-6, f"interpolated features differ from conv frames 0, 2, 4, ... by {diff} (tolerance 1e-6)"


def test_normalisation_is_zero_mean_unit_variance(tiny_models):
    samples = speech_like(0.3) * 5 + 0.1
    got = tiny_models.audio_encoder.normalize(samples)
    x = samples.astype(np.float64)
    want = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    assert np.abs(got - want).max() < 1e-5, (
        f"normalised waveform differs by {np.abs(got - want).max()} (tolerance 1e-5)"
    )


def test_samples_beyond_the_padded_length_are_an_error(tiny_models):
    with pytest.raises(ValueError, match="do not fit"):
        tiny_models.audio_encoder.encode(speech_like(1.0), num_frames=10)
