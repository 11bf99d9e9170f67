"""Image in: decode the reference face and fit it to a size bucket (upstream's `resize_pad`).

Both steps have a bounded cost for every image within the limits: the pixel count is checked from the
header before any pixel is decoded, and the fit resamples only the source pixels that reach the bucket, so
a 4096x1 strip costs what a square photo does (a plain resize-then-crop would first scale it to
400x1,638,400).
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image, ImageOps

from model.errors import RequestError

SUPPORTED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP")  # MPO: a JPEG with an MPF segment, as phones write them
STRIP_BYTES = 4 << 20  # pixels copied out of Pillow at a time
OUTPUT_BLOCK = 64  # output columns resampled at a time: bounds the intermediate to (height, ~64 * scale, 3)


def decode_image(data: bytes, max_side: int, field: str = "image_base64") -> np.ndarray:
    """JPEG/PNG/WebP bytes -> (H, W, 3) uint8 RGB, EXIF orientation applied, alpha dropped, first frame only.

    Raises RequestError: 422 `invalid_image` (not a supported or decodable image), 422 `image_too_large`
    (a side over `max_side`, or a decompression bomb), decided from the header before decoding.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the side limit below decides
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise RequestError("image_too_large", f"{field} declares too many pixels ({exc}); the limit is {max_side} px a side", field)
    except Exception as exc:  # Pillow raises many types for hostile headers
        raise RequestError("invalid_image", f"{field} is not a JPEG, PNG or WebP image ({exc.__class__.__name__})", field)
    if image.format not in SUPPORTED_FORMATS:
        raise RequestError("invalid_image", f"{field} is a {image.format} image; send JPEG, PNG or WebP", field)
    if max(image.size) > max_side:
        raise RequestError(
            "image_too_large",
            f"{field} is {image.size[0]}x{image.size[1]} px; the limit is {max_side} px a side. Downscale it",
            field,
        )
    try:
        ImageOps.exif_transpose(image, in_place=True)  # in place: a 4096x4096 image is 64 MB in Pillow
        if image.mode != "RGB":
            image = image.convert("RGB")  # upstream: Image.open(...).convert("RGB"); frame 0
        return _to_array(image)
    except Exception as exc:  # truncated data, broken EXIF, an unconvertible mode
        raise RequestError("invalid_image", f"{field} could not be decoded ({exc.__class__.__name__}: {exc}); is it truncated?", field)


def _to_array(image: Image.Image) -> np.ndarray:
    """An RGB image's pixels, copied a strip at a time: np.asarray(image) would hold two more full copies."""
    width, height = image.size
    pixels = np.empty((height, width, 3), np.uint8)
    rows = max(1, STRIP_BYTES // (3 * width))
    for top in range(0, height, rows):
        pixels[top : top + rows] = np.asarray(image.crop((0, top, width, min(height, top + rows))))
    return pixels


def choose_bucket(height: int, width: int, buckets: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """The (height, width) bucket whose aspect ratio is closest to the image's; ties go to the earliest.

    Upstream's `match_size` also compares the larger side on exact ratio ties, but never updates the stored
    difference; for any bucket list with distinct ratios this is the same rule.
    """
    ratio = height / width
    return min(buckets, key=lambda b: abs(b[0] / b[1] - ratio))


def fit_to_bucket(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Upstream's `resize_pad`: scale to cover (bilinear, antialiased), then centre-crop or pad with black.

    The scale is the larger of the two ratios and the scaled size is truncated, so the result is a centre
    crop whose odd pixel comes off the top/left, or, when truncation leaves one row short, a black row at the
    bottom/right. Only the kept rows and columns of the scaled image are computed, with the weights of
    PyTorch's antialiased bilinear `interpolate` (the same values within float32 rounding), so the cost is
    bounded by the bucket, not by the scaled size. Returns (height, width, 3) float32 in [0, 1].
    """
    h, w = image.shape[:2]
    scale = max(height / h, width / w)
    new_h, new_w = int(h * scale), int(w * scale)
    dh, dw = height - new_h, width - new_w
    rows, row_weights = _axis_weights(h, new_h, -(dh // 2), height)  # (height, taps)
    cols, col_weights = _axis_weights(w, new_w, -(dw // 2), width)  # (width, taps)
    out = np.empty((height, width, 3), np.float32)
    for start in range(0, width, OUTPUT_BLOCK):
        block_cols, block_weights = cols[start : start + OUTPUT_BLOCK], col_weights[start : start + OUTPUT_BLOCK]
        first, last = int(block_cols.min()), int(block_cols.max()) + 1
        strip = _weighted_sum(image[:, first:last], rows, row_weights, axis=0)  # (height, last - first, 3)
        out[:, start : start + len(block_cols)] = _weighted_sum(strip, block_cols - first, block_weights, axis=1)
    return out / np.float32(255)


def _axis_weights(in_size: int, out_size: int, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights, (count, taps), of output positions first .. first + count - 1 of an
    antialiased bilinear resize from `in_size` to `out_size`; positions outside [0, out_size) are padding
    and get zero weights. The arithmetic is PyTorch's, in float32 and in its order, so the weights are its."""
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    support = scale if scale >= 1 else f32(1)  # the triangle filter widens by the downscale factor
    inverse = f32(1) / scale if scale >= 1 else f32(1)
    taps = math.ceil(2 * float(support)) + 1
    position = np.arange(first, first + count)
    centre = scale * (position + f32(0.5)).astype(f32)
    low = np.maximum((centre - support + f32(0.5)).astype(np.int64), 0)
    high = np.minimum((centre + support + f32(0.5)).astype(np.int64), in_size)
    index = low[:, None] + np.arange(taps)
    weights = np.clip(f32(1) - np.abs(((index - centre[:, None]).astype(f32) + f32(0.5)) * inverse), 0, None).astype(f32)
    weights[index >= high[:, None]] = 0
    total = np.zeros(count, f32)
    for k in range(taps):  # summed in tap order, as PyTorch does
        total += weights[:, k]
    weights = np.divide(weights, total[:, None], out=np.zeros_like(weights), where=total[:, None] > 0)
    weights[(position < 0) | (position >= out_size)] = 0
    return np.minimum(index, in_size - 1), weights


def _weighted_sum(pixels: np.ndarray, index: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """sum_k weights[:, k] * pixels taken at index[:, k] along `axis` (0 or 1), in float32."""
    shape = list(pixels.shape)
    shape[axis] = len(index)
    out = np.zeros(shape, np.float32)
    for k in range(index.shape[1]):
        w = weights[:, k, None, None] if axis == 0 else weights[None, :, k, None]
        out += w * np.take(pixels, index[:, k], axis=axis)
    return out
