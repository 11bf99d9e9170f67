"""Filling networks built on the meta device by assignment, checking every key and shape."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from model.omniavatar.config import OmniAvatarConfig
from model.omniavatar.convert import CheckpointError

__all__ = ["Filler", "describe", "no_meta_left"]


def describe(config: OmniAvatarConfig) -> str:
    return (
        f"{config.name}: dim {config.dim}, ffn {config.ffn_dim}, {config.num_layers} layers, {config.num_heads} heads"
    )


class Filler:
    """Fills a meta-built module by assignment, checking every key and shape against the module's own."""

    def __init__(self, module: nn.Module, what: str, dtype: torch.dtype, device: torch.device | str):
        self.module, self.what, self.dtype, self.device = module, what, dtype, device
        self.expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        self.filled: set[str] = set()

    def fill(self, tensors: Mapping[str, torch.Tensor], source: str, names: Mapping[str, str] | None = None) -> None:
        """Assign `tensors` (target names); `names` maps target -> source key for error messages."""
        batch = {}
        for key, tensor in tensors.items():
            shown = (names or {}).get(key, key)
            if key not in self.expected:
                raise CheckpointError(f"{source}: unexpected key {shown!r} (as {key!r}) for the {self.what}")
            if tuple(tensor.shape) != self.expected[key]:
                raise CheckpointError(
                    f"{source}: {shown!r} has shape {list(tensor.shape)}, the {self.what} expects "
                    f"{list(self.expected[key])}"
                )
            if key in self.filled:
                raise CheckpointError(f"{source}: {shown!r} is given twice for the {self.what}")
            dtype = self.dtype if tensor.is_floating_point() else tensor.dtype
            batch[key] = tensor.to(device=self.device, dtype=dtype)
        self.module.load_state_dict(batch, strict=False, assign=True)
        self.filled.update(batch)

    def finish(self, source: str) -> None:
        missing = sorted(set(self.expected) - self.filled)
        if missing:
            shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            raise CheckpointError(f"{source}: the {self.what} misses {len(missing)} tensors: {shown}")


def no_meta_left(module: nn.Module, what: str) -> None:
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"the {what} still has unloaded tensors: {left[:8]}")


