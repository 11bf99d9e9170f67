"""The Wan VAE wrapper: shapes, latent normalisation, and upstream's tiling rule."""

from __future__ import annotations

import pytest
import torch

from model.omniavatar.vae import tile_starts, tiled_apply

from .helpers import max_diff


@pytest.mark.parametrize(("frames", "latent_frames"), [(1, 1), (5, 2), (9, 3)])
def test_encode_decode_shapes(tiny_models, frames, latent_frames):
    vae = tiny_models.vae
    video = torch.rand(1, 3, frames, 32, 48, generator=torch.Generator().manual_seed(frames)) * 2 - 1
    latents = vae.encode(video)
    assert latents.shape == (1, 16, latent_frames, 4, 6), (
        f"expected (1, 16, {latent_frames}, 4, 6), found {tuple(latents.shape)}"
    )
    decoded = vae.decode(latents)
    assert decoded.shape == (1, 3, frames, 32, 48), f"expected (1, 3, {frames}, 32, 48), found {tuple(decoded.shape)}"
    assert decoded.min() >= -1 and decoded.max() <= 1, (
        f"decode must clamp to [-1, 1], found [{decoded.min()}, {decoded.max()}]"
    )


def test_encode_rejects_frame_counts_that_are_not_1_plus_4k(tiny_models):
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        tiny_models.vae.encode(torch.zeros(1, 3, 4, 32, 32))


def test_single_tile_equals_untiled_diffusers_calls_with_wan_normalisation(tiny_models):
    """When one tile covers the whole input, encode/decode equal diffusers' own untiled encode/decode."""
    vae = tiny_models.vae
    video = torch.rand(1, 3, 5, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mean = torch.tensor([-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                         0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]).view(1, 16, 1, 1, 1)  # fmt: skip
    std = torch.tensor([2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                        3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]).view(1, 16, 1, 1, 1)  # fmt: skip
    with torch.no_grad():
        latents = vae.encode(video)
        want = (vae.model.encode(video).latent_dist.mean - mean) * (1 / std)  # z = (μ - mean)·(1/std)
        diff = max_diff(latents, want)
        assert diff < 1e-5, f"tiled encode differs from untiled diffusers encode by {diff} (tolerance 1e-5)"
        decoded = vae.decode(latents)
        want = vae.model.decode(latents / (1 / std) + mean).sample  # diffusers' decode clamps too
        diff = max_diff(decoded, want)
        assert diff < 1e-5, f"tiled decode differs from untiled diffusers decode by {diff} (tolerance 1e-5)"


@pytest.mark.parametrize(("height", "width", "encode_tiles", "decode_tiles"), [(720, 720, 25, 15), (400, 720, 10, 9)])
def test_tile_counts_match_upstream(height, width, encode_tiles, decode_tiles):
    enc = len(tile_starts(height, 272, 144)) * len(tile_starts(width, 272, 128))
    dec = len(tile_starts(height // 8, 30, 15)) * len(tile_starts(width // 8, 52, 26))
    assert (enc, dec) == (encode_tiles, decode_tiles), (
        f"expected {encode_tiles}/{decode_tiles} tiles, found {enc}/{dec}"
    )


def test_tile_starts_skip_tiles_that_add_nothing():
    assert tile_starts(90, 30, 15) == [0, 15, 30, 45, 60], f"found {tile_starts(90, 30, 15)}"
    assert tile_starts(90, 52, 26) == [0, 26, 52], f"found {tile_starts(90, 52, 26)}"
    assert tile_starts(4, 30, 15) == [0], (
        f"a tile larger than the axis must be the only one, found {tile_starts(4, 30, 15)}"
    )


@pytest.mark.parametrize("scale", [(1, 1), (2, 1), (1, 2)])
def test_blending_reproduces_a_spatially_exact_map(scale):
    """If each tile's result is exactly the crop of the global result, the weighted blend must return it."""
    up, down = scale
    x = torch.randn(1, 2, 3, 40, 52, dtype=torch.float64)

    def resample(t: torch.Tensor) -> torch.Tensor:
        if up > 1:
            return t.repeat_interleave(up, -1).repeat_interleave(up, -2)
        return t[..., ::down, ::down]

    got = tiled_apply(x, resample, size=(16, 20), stride=(10, 12), scale=scale)
    want = resample(x)
    assert got.shape == want.shape, f"expected {tuple(want.shape)}, found {tuple(got.shape)}"
    diff = max_diff(got, want)
    assert diff < 1e-12, f"blend of exact tiles differs from the global map by {diff} (tolerance 1e-12)"


def test_blend_weights_ramp_linearly_over_the_overlap():
    """Two tiles along W with a 4-sample overlap: the first fades 4/4..1/4, the second rises 1/4..4/4."""
    x = torch.zeros(1, 1, 1, 1, 12, dtype=torch.float64)
    tiles = []

    def mark(t: torch.Tensor) -> torch.Tensor:
        tiles.append(t.shape[-1])
        return torch.full_like(t, float(len(tiles)))  # tile k is constant k

    got = tiled_apply(x, mark, size=(1, 8), stride=(1, 4), scale=(1, 1))[0, 0, 0, 0]
    # overlap samples 4..7: weights first (4-i)/4 ... i.e. first tile ramps down, second ramps up
    w_up = torch.tensor([1, 2, 3, 4], dtype=torch.float64) / 4
    expected_overlap = (1 * w_up.flip(0) + 2 * w_up) / (w_up.flip(0) + w_up)
    assert tiles == [8, 8], f"expected two tiles of width 8, found {tiles}"
    assert torch.allclose(got[4:8], expected_overlap), (
        f"expected {expected_overlap.tolist()}, found {got[4:8].tolist()}"
    )
    assert got[:4].tolist() == [1.0] * 4 and got[8:].tolist() == [2.0] * 4, f"non-overlap samples wrong: {got.tolist()}"
