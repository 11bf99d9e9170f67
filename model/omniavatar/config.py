"""OmniAvatar architecture configs (the shipped 1.3B / 14B registry) and the backend's typed options."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from model.omniavatar.parallel import ParallelLayout

__all__ = ["ATTENTION_CHOICES", "CONFIGS", "DTYPES", "ExtraLora", "OmniAvatarConfig", "OmniAvatarOptions", "shipped_config"]


@dataclass(frozen=True)
class OmniAvatarConfig:
    """Dimensions and fixed hyper-parameters of one OmniAvatar model (DiT, LoRA, VAE, text and audio encoders).

    Field names of the DiT group follow Wan's `config.json` / upstream `model_config` keys, so a
    directory's own config can override them by name.
    """

    name: str
    # dit
    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    freq_dim: int = 256
    text_dim: int = 4096
    in_dim: int = 33  # noisy latent (16) + reference latent (16) + mask (1)
    out_dim: int = 16
    eps: float = 1e-6
    patch_size: tuple[int, int, int] = (1, 2, 2)
    audio_hidden_size: int = 32
    # lora (OmniAvatar config.json: lora_rank, lora_alpha, lora_target_modules)
    lora_rank: int = 128
    lora_alpha: float = 64.0
    lora_targets: tuple[str, ...] = ("q", "k", "v", "o", "ffn.0", "ffn.2")
    # vae
    vae_base_dim: int = 96
    vae_z_dim: int = 16
    vae_encode_tile: tuple[int, int] = (34, 34)  # (H, W) in latent cells; upstream multiplies by 8 for pixels
    vae_encode_stride: tuple[int, int] = (18, 16)
    vae_decode_tile: tuple[int, int] = (30, 52)
    vae_decode_stride: tuple[int, int] = (15, 26)
    # text
    text_len: int = 512
    t5_vocab: int = 256384
    t5_dim: int = 4096
    t5_ffn_dim: int = 10240
    t5_num_heads: int = 64
    t5_num_layers: int = 24
    t5_num_buckets: int = 32
    t5_max_distance: int = 128
    # audio
    audio_dim: int = 10752  # (wav2vec2 layers + 2) x hidden; replaced by the wav2vec2 folder's own value at load
    audio_group: int = 4  # video frames per latent frame packed by AudioPack (the VAE's temporal stride)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def audio_layers(self) -> range:
        """Blocks that receive audio: 2 .. num_layers // 2."""
        return range(2, self.num_layers // 2 + 1)

    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_rank

    def updated(self, **changes: Any) -> OmniAvatarConfig:
        """A copy with `changes`; unknown names raise ValueError naming them."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown OmniAvatarConfig fields {unknown}; known: {sorted(known)}")
        return replace(self, **changes)


_SHARED = OmniAvatarConfig(name="shared")

CONFIGS: dict[str, OmniAvatarConfig] = {
    "1.3b": _SHARED.updated(name="1.3b", dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    "14b": _SHARED.updated(name="14b", dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
}


def shipped_config(name: str) -> OmniAvatarConfig:
    """The shipped config called `name` ("1.3b" or "14b")."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown OmniAvatar size {name!r}; shipped: {sorted(CONFIGS)}") from None


DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


ATTENTION_CHOICES = ("auto", "native", "math", "flex", "flash", "flash3", "cudnn", "sage")


@dataclass(frozen=True)
class ExtraLora:
    """A LoRA file merged into the DiT at load, after OmniAvatar's own: W += strength · (alpha / rank) · B @ A."""

    path: Path
    strength: float = 1.0


def _device(value: Any, key: str) -> str:
    device = str(value)
    if not (device == "cpu" or device == "cuda" or device.startswith("cuda:")):
        raise ValueError(f"options.{key} must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return device


def _flag(options: dict[str, Any], key: str, default: bool) -> bool:
    value = options.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"options.{key} must be true or false, got {value!r}")
    return value


@dataclass(frozen=True)
class OmniAvatarOptions:
    """The `options:` block of an OmniAvatar model YAML: where the files are and how to run them.

    Every speed option is off by default, and the default output is upstream's to rounding. `text_kv_cache`
    and `compile` leave the output unchanged; `attention` other than `native`, `vae_tiling: false` and
    `offload` may move it by rounding; TeaCache and `extra_loras` change it by design.
    """

    base_dir: Path  # Wan2.1-T2V-14B/ or Wan2.1-T2V-1.3B/ (DiT shards, VAE, T5, tokenizer)
    omniavatar_dir: Path  # OmniAvatar-14B/ or OmniAvatar-1.3B/ (pytorch_model.pt, config.json)
    wav2vec_dir: Path  # wav2vec2-base-960h/
    dtype: str = "bf16"  # fp32 | bf16 | fp16 for the DiT, VAE and T5; wav2vec2 always runs in fp32
    device: str = "cuda"  # cuda | cuda:N | cpu
    prompt_cache_size: int = 32  # prompt embeddings kept across requests (1 x 512 x 4096 each)
    reference_cache_size: int = 32  # reference-image latents kept across requests
    attention: str = "native"  # see ATTENTION_CHOICES and model/omniavatar/attention.py
    compile: bool = False  # torch.compile each DiT block, warmed up at every bucket's shapes at load
    tea_cache_model: str | None = None  # TeaCache coefficients: 14b | 1.3b (default: the detected size)
    extra_loras: tuple[ExtraLora, ...] = ()
    text_kv_cache: bool = False  # cross-attention keys/values computed once per prompt, not every step
    vae_tiling: bool = True  # false: decode a segment in one piece (needs memory; upstream tiles)
    text_encoder_device: str | None = None  # e.g. cpu: the UMT5 encoder off the GPU (default: `device`)
    offload: bool = False  # DiT blocks kept on the CPU and streamed to the GPU group by group
    shared_text_encoder: bool = False  # UMT5 in the service's TextEncoder deployment, not in each generator
    parallel: ParallelLayout = ParallelLayout()  # ranks per replica: {ulysses: N, cfg: 1 | 2} (see parallel.py)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @classmethod
    def from_dict(cls, options: dict[str, Any], resolve: Callable[[Path], Path] = Path.expanduser) -> OmniAvatarOptions:
        """Parse a YAML `options:` mapping, raising ValueError naming a bad key.

        `model_dir`, when given, is the folder holding the three downloads: relative `base_dir`,
        `omniavatar_dir` and `wav2vec_dir` are taken inside it. `resolve` then maps each directory and
        LoRA file (e.g. `model.config.resolve_path`: as given if it exists, else relative to the project root).
        """
        dirs = ("base_dir", "omniavatar_dir", "wav2vec_dir")
        flags = {"compile": False, "text_kv_cache": False, "vae_tiling": True, "offload": False, "shared_text_encoder": False}
        known = ("model_dir", *dirs, "dtype", "device", "prompt_cache_size", "reference_cache_size", "attention",
                 "tea_cache_model", "extra_loras", "text_encoder_device", "parallel", *flags)  # fmt: skip
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"unknown OmniAvatar options {unknown}; known: {list(known)}")
        missing = [k for k in dirs if not options.get(k)]
        if missing:
            raise ValueError(f"OmniAvatar options need {missing} (directories of the official downloads)")
        dtype = str(options.get("dtype", "bf16"))
        if dtype not in DTYPES:
            raise ValueError(f"options.dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        attention = str(options.get("attention", "native"))
        if attention not in ATTENTION_CHOICES:
            raise ValueError(f"options.attention must be one of {list(ATTENTION_CHOICES)}, got {attention!r}")
        tea_model = options.get("tea_cache_model")
        if tea_model is not None and str(tea_model) not in ("14b", "1.3b"):
            raise ValueError(f"options.tea_cache_model must be '14b' or '1.3b', got {tea_model!r}")
        if options.get("text_kv_cache") and options.get("offload"):
            raise ValueError("options.text_kv_cache and options.offload cannot be combined (offloaded blocks "
                             "are on the host when the keys/values are computed)")  # fmt: skip
        parallel = ParallelLayout.from_dict(options.get("parallel"))
        if parallel.world_size > 1 and options.get("compile"):
            raise ValueError("options.compile cannot be combined with options.parallel (collectives inside the blocks)")
        root = Path(options["model_dir"]).expanduser() if options.get("model_dir") else None
        located = {k: resolve(root / options[k] if root is not None else Path(options[k])) for k in dirs}
        caches = {k: int(options[k]) for k in ("prompt_cache_size", "reference_cache_size") if k in options}
        text_device = options.get("text_encoder_device")
        return cls(
            **located,
            dtype=dtype,
            device=_device(options.get("device", "cuda"), "device"),
            **caches,
            attention=attention,
            tea_cache_model=None if tea_model is None else str(tea_model),
            extra_loras=_extra_loras(options.get("extra_loras") or [], root, resolve),
            text_encoder_device=None if text_device is None else _device(text_device, "text_encoder_device"),
            **{k: _flag(options, k, default) for k, default in flags.items()},
            parallel=parallel,
        )


def _extra_loras(entries: Any, root: Path | None, resolve: Callable[[Path], Path]) -> tuple[ExtraLora, ...]:
    """`[{path, strength}]` -> ExtraLora entries (relative paths inside `model_dir`, like the model folders)."""
    if not isinstance(entries, list):
        raise ValueError(f"options.extra_loras must be a list of {{path, strength}}, got {entries!r}")
    loras = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "path" not in entry or set(entry) - {"path", "strength"}:
            raise ValueError(f"options.extra_loras[{i}] must be {{path, strength}}, got {entry!r}")
        strength = entry.get("strength", 1.0)
        if isinstance(strength, bool) or not isinstance(strength, (int, float)):
            raise ValueError(f"options.extra_loras[{i}].strength must be a number, got {strength!r}")
        path = Path(str(entry["path"])).expanduser()
        loras.append(ExtraLora(resolve(root / path if root is not None else path), float(strength)))
    return tuple(loras)
