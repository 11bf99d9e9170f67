"""The DiT's attention kernel, chosen in the model config (`options.attention`) among diffusers' backends.

| choice | diffusers backend | runs on |
| --- | --- | --- |
| native | `native` (PyTorch SDPA; the default, upstream's fallback) | any device |
| math | `_native_math` (SDPA's reference kernel) | any device |
| flex | `flex` (FlexAttention) | any device (compiled kernels on CUDA) |
| flash | `flash` (FlashAttention 2, package `flash-attn`) | CUDA |
| flash3 | `_flash_3` (FlashAttention 3, package `flash_attn_interface`) | CUDA, Hopper |
| cudnn | `_native_cudnn` (SDPA's cuDNN kernel) | CUDA |
| sage | `sage` (SageAttention, package `sageattention`) | CUDA |

`auto` takes the first usable of flash3 (Hopper), flash, cudnn, native on CUDA, and native elsewhere. An
explicit choice that cannot run on the device raises a ValueError saying why.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements
from torch import nn

__all__ = ["BACKENDS", "attention_backend_for", "set_attention"]

BACKENDS: dict[str, AttentionBackendName] = {
    "native": AttentionBackendName.NATIVE,
    "math": AttentionBackendName._NATIVE_MATH,
    "flex": AttentionBackendName.FLEX,
    "flash": AttentionBackendName.FLASH,
    "flash3": AttentionBackendName._FLASH_3,
    "cudnn": AttentionBackendName._NATIVE_CUDNN,
    "sage": AttentionBackendName.SAGE,
}
CUDA_ONLY = ("flash", "flash3", "cudnn", "sage")
AUTO_ORDER = ("flash3", "flash", "cudnn", "native")


def unusable_reason(choice: str, device: torch.device) -> str | None:
    """Why `choice` cannot run on `device`, or None when it can."""
    if choice not in BACKENDS:
        return f"unknown attention backend {choice!r}; choose one of {['auto', *BACKENDS]}"
    if choice in CUDA_ONLY and device.type != "cuda":
        return f"attention backend {choice!r} needs a CUDA device, the DiT runs on {device}"
    if choice == "flash3" and torch.cuda.get_device_capability(device)[0] != 9:
        return "attention backend 'flash3' needs a Hopper GPU (compute capability 9.x)"
    try:
        _check_attention_backend_requirements(BACKENDS[choice])
    except RuntimeError as err:
        return f"attention backend {choice!r} is not installed: {err}"
    return None


def attention_backend_for(choice: str, device: torch.device | str) -> str:
    """The concrete choice for `choice` on `device` (resolving `auto`); ValueError when it cannot run."""
    device = torch.device(device)
    if choice == "auto":
        candidates = AUTO_ORDER if device.type == "cuda" else ("native",)
        return next(c for c in candidates if unusable_reason(c, device) is None)
    reason = unusable_reason(choice, device)
    if reason is not None:
        raise ValueError(f"options.attention: {reason}")
    return choice


def set_attention(model: nn.Module, choice: str) -> None:
    """Route every attention layer of a diffusers model through the backend of a resolved `choice`
    (`native` is diffusers' default dispatch, PyTorch's SDPA, the same kernel as an unset backend)."""
    model.set_attention_backend(BACKENDS[choice].value)
