"""The Wan VAE as OmniAvatar uses it: diffusers' AutoencoderKLWan, latent normalisation and upstream's tiling.

Encoding maps pixels in [-1, 1], (B, 3, 1 + 4k, H, W), to normalised latents (B, 16, 1 + k, H/8, W/8);
decoding does the reverse and clamps once at the end. Both run upstream's own spatial tiler:
overlapping tiles over the full time axis, each encoded/decoded on its own, blended by a weighted
average whose weights ramp linearly over the overlap. diffusers' built-in tiling is a different algorithm
and its `decode` clamps every tile, so neither is used.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import AutoencoderKLWan
from torch import nn

__all__ = ["WanVAE", "blend_ramp", "tile_starts", "tiled_apply"]

# per-channel statistics of the Wan2.1 latent space
LATENT_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
               0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)  # fmt: skip
LATENT_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
              3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)  # fmt: skip


def tile_starts(length: int, size: int, stride: int) -> list[int]:
    """Tile starts along one axis: 0, stride, 2·stride, ... < length, skipping a start once the previous tile
    already reaches the end."""
    return [x for x in range(0, length, stride) if not (x >= stride and x - stride + size >= length)]


def blend_ramp(length: int, ramp_in: bool, ramp_out: bool, width: int) -> torch.Tensor:
    """1-D tile weight of `length` samples: 1/width .. width/width over the first `width` samples when `ramp_in`,
    mirrored over the last `width` when `ramp_out`, 1 elsewhere. (Upstream crashes when a tile is shorter than
    `width`; here the ramp is cut to the tile.)"""
    weight = torch.ones(length)
    ramp = torch.arange(1, width + 1, dtype=torch.float32) / width
    n = min(width, length)
    if ramp_in:
        weight[:n] = ramp[:n]
    if ramp_out:
        weight[length - n :] = ramp.flip(0)[width - n :]
    return weight


def tiled_apply(
    x: torch.Tensor,
    fn: Callable[[torch.Tensor], torch.Tensor],
    size: tuple[int, int],
    stride: tuple[int, int],
    scale: tuple[int, int],
) -> torch.Tensor:
    """Apply a spatially local video map `fn` tile by tile and blend the results (upstream's tiler).

    Args:
        x: (B, C, F, H, W) input; tiles cover the full time axis.
        fn: maps a (B, C, F, h, w) tile to (B, C', F', h·up/down, w·up/down).
        size, stride: tile size and stride (H, W) in units of `x`.
        scale: (up, down): output pixels per input pixel is up / down (8/1 to decode, 1/8 to encode).

    Returns:
        (B, C', F', H·up/down, W·up/down), in `x`'s dtype; weights are cast to that dtype as upstream does.
    """
    height, width = x.shape[-2:]
    up, down = scale
    border = ((size[0] - stride[0]) * up // down, (size[1] - stride[1]) * up // down)
    values = weights = None
    for top in tile_starts(height, size[0], stride[0]):
        for left in tile_starts(width, size[1], stride[1]):
            tile = fn(x[..., top : top + size[0], left : left + size[1]])
            if values is None:
                out_shape = (*tile.shape[:3], height * up // down, width * up // down)
                values = torch.zeros(out_shape, dtype=x.dtype, device=tile.device)
                weights = torch.zeros((1, 1, 1, *out_shape[-2:]), dtype=x.dtype, device=tile.device)
            rows = blend_ramp(tile.shape[-2], top > 0, top + size[0] < height, border[0])
            cols = blend_ramp(tile.shape[-1], left > 0, left + size[1] < width, border[1])
            mask = torch.minimum(rows[:, None], cols[None, :]).to(device=tile.device, dtype=x.dtype)  # (h', w')
            out_top, out_left = top * up // down, left * up // down
            region = (..., slice(out_top, out_top + tile.shape[-2]), slice(out_left, out_left + tile.shape[-1]))
            values[region] += tile * mask
            weights[region] += mask
    return values / weights


class WanVAE(nn.Module):
    """AutoencoderKLWan with Wan's latent normalisation and upstream's tiled encode/decode.

    Args:
        model: the diffusers VAE (weights already loaded).
        encode_tile, encode_stride: encoder tiles (H, W) in latent cells (upstream: (34, 34), (18, 16)).
        decode_tile, decode_stride: decoder tiles (H, W) in latent cells (upstream: (30, 52), (15, 26)).
    """

    spatial_factor = 8
    temporal_factor = 4

    def __init__(
        self,
        model: AutoencoderKLWan,
        encode_tile: tuple[int, int] = (34, 34),
        encode_stride: tuple[int, int] = (18, 16),
        decode_tile: tuple[int, int] = (30, 52),
        decode_stride: tuple[int, int] = (15, 26),
    ):
        super().__init__()
        self.model = model
        self.encode_tile, self.encode_stride = tuple(encode_tile), tuple(encode_stride)
        self.decode_tile, self.decode_stride = tuple(decode_tile), tuple(decode_stride)
        self.tiled_decode = True  # False: one piece (more memory, no tile seams; upstream tiles)
        z_dim = model.config.z_dim
        if z_dim != len(LATENT_MEAN):
            raise ValueError(f"Wan latent statistics are for z_dim {len(LATENT_MEAN)}, the VAE has z_dim {z_dim}")
        self.register_buffer("latent_mean", torch.tensor(LATENT_MEAN).view(1, z_dim, 1, 1, 1), persistent=False)
        self.register_buffer("latent_inv_std", 1.0 / torch.tensor(LATENT_STD).view(1, z_dim, 1, 1, 1), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, 1 + 4k, H, W) pixels in [-1, 1] -> (B, 16, 1 + k, H/8, W/8) normalised latents."""
        frames, height, width = video.shape[2:]
        if (frames - 1) % self.temporal_factor or height % self.spatial_factor or width % self.spatial_factor:
            raise ValueError(f"VAE input must have 1 + 4k frames and sides divisible by 8, got {tuple(video.shape)}")
        f = self.spatial_factor
        size = (self.encode_tile[0] * f, self.encode_tile[1] * f)
        stride = (self.encode_stride[0] * f, self.encode_stride[1] * f)
        return tiled_apply(video.to(self.dtype), self._encode_tile, size, stride, (1, f))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 16, T, h, w) normalised latents -> (B, 3, 1 + 4(T-1), 8h, 8w) pixels clamped to [-1, 1]."""
        if not self.tiled_decode:
            return self._decode_tile(latents.to(self.dtype)).clamp_(-1.0, 1.0)
        video = tiled_apply(
            latents.to(self.dtype), self._decode_tile, self.decode_tile, self.decode_stride, (self.spatial_factor, 1)
        )
        return video.clamp_(-1.0, 1.0)

    def _encode_tile(self, video: torch.Tensor) -> torch.Tensor:
        """One tile, untiled: μ of the posterior, normalised with the constants in the working dtype."""
        mu = self.model.encode(video).latent_dist.mean  # (B, 16, T, h, w)
        return (mu - self.latent_mean.to(mu.dtype)) * self.latent_inv_std.to(mu.dtype)

    def _decode_tile(self, latents: torch.Tensor) -> torch.Tensor:
        """One tile, untiled and unclamped: denormalise, then diffusers' decoder one latent frame at a time."""
        vae = self.model
        z = latents / self.latent_inv_std.to(latents.dtype) + self.latent_mean.to(latents.dtype)
        vae.clear_cache()
        x = vae.post_quant_conv(z)
        frames = []
        for i in range(x.shape[2]):
            vae._conv_idx = [0]
            frames.append(
                vae.decoder(x[:, :, i : i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=i == 0)
            )
        vae.clear_cache()
        return torch.cat(frames, dim=2)  # (B, 3, 1 + 4(T-1), 8h, 8w)
