"""TextEncoder: one UMT5 (with its prompt cache) serving every generator replica of an application.

With `options.shared_text_encoder: true` in the model config, the application gets this deployment and each
generator (and each of its rank workers) receives a `RemoteTextEncoder` instead of loading its own 11 GB UMT5.
The encoder runs on `options.text_encoder_device` (default `options.device`) of its own replica.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from model.config import ModelConfig

if TYPE_CHECKING:
    import torch

__all__ = ["RemoteTextEncoder", "TextEncoder"]

ENCODE_TIMEOUT_S = 300.0


@serve.deployment(name="TextEncoder", ray_actor_options={"num_cpus": 1})
class TextEncoder:
    """Loads UMT5 before Serve routes to it; `encode(text)` -> (1, text_len, text_dim) on the CPU."""

    async def __init__(self, config: ModelConfig) -> None:
        from model.omniavatar.prompts import PromptEncoder  # torch and transformers: only in this replica

        self._encoder = await asyncio.to_thread(PromptEncoder, config)

    async def encode(self, text: str) -> torch.Tensor:
        return await asyncio.to_thread(self._encoder.encode, text)

    async def describe(self) -> dict[str, Any]:
        return self._encoder.describe()


class RemoteTextEncoder:
    """A generator's side of the shared encoder: text -> context, called from the generator's worker threads."""

    def __init__(self, handle: DeploymentHandle, timeout_s: float = ENCODE_TIMEOUT_S) -> None:
        self._handle = handle
        self._timeout_s = timeout_s

    def __call__(self, text: str) -> torch.Tensor:
        return self._handle.encode.remote(text).result(timeout_s=self._timeout_s)

    def describe(self) -> dict[str, Any]:
        return self._handle.describe.remote().result(timeout_s=self._timeout_s)
