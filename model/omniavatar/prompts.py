"""UMT5 on its own, with its prompt cache: what a shared text-encoder process serves to every generator.

A generator with `options.shared_text_encoder: true` loads no UMT5 and asks this encoder (through the service's
TextEncoder deployment) for each prompt it has not cached; the same loader, dtype and device give the same
rows as encoding inside the generator.
"""

from __future__ import annotations

from typing import Any

import torch

from model.config import ModelConfig, resolve_path
from model.omniavatar.backend import LruCache
from model.omniavatar.config import OmniAvatarOptions
from model.omniavatar.dims import resolve_config
from model.omniavatar.loading import CheckpointFiles, load_text_encoder

__all__ = ["PromptEncoder"]


class PromptEncoder:
    """The model config's UMT5 on `options.text_encoder_device` (default `options.device`), in `options.dtype`."""

    def __init__(self, config: ModelConfig) -> None:
        options = OmniAvatarOptions.from_dict(config.options, resolve_path)
        files = CheckpointFiles.find(options.base_dir, options.omniavatar_dir, options.wav2vec_dir)
        self.device = torch.device(options.text_encoder_device or options.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"{config.source}: the text encoder's device is {self.device} but CUDA is not available")
        self.dtype = options.dtype
        self.encoder = load_text_encoder(files, resolve_config(files), options.torch_dtype, self.device)
        self._prompts: LruCache[torch.Tensor] = LruCache(options.prompt_cache_size)

    @torch.inference_mode()
    def encode(self, text: str) -> torch.Tensor:
        """(1, text_len, text_dim) on the CPU, from the cache when this text was encoded before."""
        return self._prompts.get_or_compute(text, lambda: self.encoder.encode([text]).cpu())

    def describe(self) -> dict[str, Any]:
        weights = sum(p.numel() * p.element_size() for p in self.encoder.parameters())
        return {"model": "UMT5 encoder", "device": str(self.device), "dtype": self.dtype,
                "weights_bytes": weights, "cached_prompts": len(self._prompts)}  # fmt: skip
