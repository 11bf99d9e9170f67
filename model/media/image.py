"""Image in: decode the reference face and fit it to a size bucket (upstream's rule)."""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from model.errors import RequestError

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP")


def decode_image(data: bytes, max_side: int, field: str = "image_base64") -> np.ndarray:
    """JPEG/PNG/WebP bytes -> (H, W, 3) uint8 RGB, EXIF orientation applied, alpha dropped."""
    try:
        image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
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
        image = ImageOps.exif_transpose(image).convert("RGB")  # upstream: Image.open(...).convert("RGB")
    except (OSError, ValueError, SyntaxError) as exc:
        raise RequestError("invalid_image", f"{field} could not be decoded ({exc}); is it truncated?", field)
    return np.array(image, dtype=np.uint8)  # a writable copy


def choose_bucket(height: int, width: int, buckets: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """The (height, width) bucket whose aspect ratio is closest to the image's; ties go to the earliest.

    Upstream's `match_size` also compares the larger side on exact ratio ties, but never updates the stored
    difference (as upstream computes it); for any bucket list with distinct ratios this is the same rule.
    """
    ratio = height / width
    return min(buckets, key=lambda b: abs(b[0] / b[1] - ratio))


def fit_to_bucket(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Upstream's `resize_pad`: scale to cover (bilinear, antialiased), then centre-crop or pad with black.

    The scale is the larger of the two ratios and the scaled size is truncated, so the result is a centre
    crop whose odd pixel comes off the top/left, or, when truncation leaves one row short, a black row at the
    bottom/right, as upstream does. Returns (height, width, 3) float32 in [0, 1], as upstream keeps it.
    """
    h, w = image.shape[:2]
    scale = max(height / h, width / w)
    new_h, new_w = int(h * scale), int(w * scale)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0  # (1, 3, h, w) in [0, 1]
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    dh, dw = height - new_h, width - new_w
    top, left = dh // 2, dw // 2
    x = F.pad(x, (left, dw - left, top, dh - top))  # negative padding crops
    return np.ascontiguousarray(x[0].permute(1, 2, 0).numpy())
