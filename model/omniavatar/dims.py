"""Model dimensions of the files a user points at: declared config.json values, else the tensors' shapes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from model.omniavatar.config import CONFIGS, OmniAvatarConfig
from model.omniavatar.convert import T5_FILE, CheckpointError
from model.omniavatar.files import CheckpointFiles, read_json

__all__ = ["dit_dims_from_shapes", "match_shipped_config", "resolve_config", "t5_dims", "vae_dims"]

DECLARABLE_DIT_FIELDS = (
    "dim", "ffn_dim", "num_heads", "num_layers", "freq_dim", "text_dim", "in_dim", "out_dim", "eps",
    "patch_size", "audio_hidden_size", "text_len",
)  # fmt: skip


def dit_dims_from_shapes(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
    """The DiT dimensions that the base Wan tensors reveal (everything but the head count)."""
    try:
        return {
            "dim": shapes["patch_embedding.weight"][0],
            "ffn_dim": shapes["blocks.0.ffn.0.weight"][0],
            "num_layers": 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("blocks.")),
            "freq_dim": shapes["time_embedding.0.weight"][1],
            "text_dim": shapes["text_embedding.0.weight"][1],
            "out_dim": shapes["head.head.weight"][0] // 4,
        }
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"the base DiT lacks a Wan2.1 tensor ({err}); is this a Wan2.1-T2V checkpoint?") from err


def match_shipped_config(shapes: Mapping[str, tuple[int, ...]]) -> OmniAvatarConfig | None:
    """The shipped config (1.3b / 14b) whose DiT dimensions equal those of `shapes`, or None."""
    dims = dit_dims_from_shapes(shapes)
    for config in CONFIGS.values():
        if all(getattr(config, name) == value for name, value in dims.items()):
            return config
    return None


def _declared_dit_fields(files: CheckpointFiles) -> dict:
    """DiT fields from Wan's config.json, then OmniAvatar's `model_config` (which wins, as upstream)."""
    declared: dict = {}
    layers = []
    if files.base_config_path.exists():
        layers.append((files.base_config_path, read_json(files.base_config_path)))
    omni = files.omniavatar_config
    model_config = omni.get("model_config") or {}
    if not isinstance(model_config, dict):
        raise CheckpointError(f"{files.omniavatar_config_path}: model_config must be an object")
    layers.append((files.omniavatar_config_path, model_config))
    for path, values in layers:
        if values.get("model_type", "t2v") != "t2v" or values.get("has_image_input"):
            raise CheckpointError(f"{path} describes a {values.get('model_type')} model; OmniAvatar needs Wan2.1-T2V")
        declared.update({k: values[k] for k in DECLARABLE_DIT_FIELDS if k in values})
    if "patch_size" in declared:
        declared["patch_size"] = tuple(declared["patch_size"])
    return declared


def resolve_config(files: CheckpointFiles) -> OmniAvatarConfig:
    """Model dimensions for the files a user points at.

    DiT: the directories' own config.json values (Wan's, then OmniAvatar's `model_config`) win; the shipped
    config whose dimensions the DiT tensors match fills the rest. LoRA rank/alpha/targets come from
    OmniAvatar's config.json. The VAE, T5 and wav2vec2 widths are read from their own files (Wan ships no
    config for the first two). Every value is checked against the tensors when they are loaded.
    """
    declared = _declared_dit_fields(files)
    shipped = match_shipped_config(files.dit_shapes)
    if shipped is None and "num_heads" not in declared:
        found = dit_dims_from_shapes(files.dit_shapes)
        known = {name: (c.dim, c.ffn_dim, c.num_layers) for name, c in CONFIGS.items()}
        raise CheckpointError(
            f"cannot tell the DiT size in {files.base_dir}: no config.json gives num_heads and its tensors "
            f"(dim, ffn_dim, num_layers) = {(found['dim'], found['ffn_dim'], found['num_layers'])} match no shipped "
            f"config {known}"
        )
    base = shipped or OmniAvatarConfig(name="custom").updated(**dit_dims_from_shapes(files.dit_shapes))
    config = base.updated(**declared)
    if config != shipped:  # named after the folder unless it is exactly a shipped config
        config = config.updated(name=files.base_dir.name)

    omni = files.omniavatar_config
    lora = {}
    if "lora_rank" in omni:
        lora["lora_rank"] = int(omni["lora_rank"])
    if "lora_alpha" in omni:
        lora["lora_alpha"] = float(omni["lora_alpha"])
    if "lora_target_modules" in omni:
        lora["lora_targets"] = tuple(t.strip() for t in str(omni["lora_target_modules"]).split(",") if t.strip())
    if omni.get("train_architecture", "lora") != "lora":
        raise CheckpointError(f"{files.omniavatar_config_path}: train_architecture must be 'lora'")

    w2v = files.wav2vec_config
    return config.updated(
        **lora,
        **vae_dims(files.vae_state, files.vae_path),
        **t5_dims(files.t5_state, files.t5_path),
        audio_dim=(w2v.num_hidden_layers + 2) * w2v.hidden_size,
    )


def vae_dims(state: Mapping[str, torch.Tensor], source: Path | str) -> dict[str, int]:
    """VAE widths from Wan's VAE tensors: base width (encoder.conv1 outputs) and latent channels (conv2)."""
    try:
        return {"vae_base_dim": state["encoder.conv1.weight"].shape[0], "vae_z_dim": state["conv2.weight"].shape[0]}
    except KeyError as err:
        raise CheckpointError(f"{source} lacks {err}; is it Wan2.1_VAE.pth?") from err


def t5_dims(state: Mapping[str, torch.Tensor], source: Path | str) -> dict[str, int]:
    """UMT5 encoder sizes from Wan's T5 tensors (heads = columns of the relative-position table)."""
    try:
        vocab, width = state["token_embedding.weight"].shape
        buckets, heads = state["blocks.0.pos_embedding.embedding.weight"].shape
        return {
            "t5_vocab": vocab,
            "t5_dim": width,
            "t5_ffn_dim": state["blocks.0.ffn.fc1.weight"].shape[0],
            "t5_num_heads": heads,
            "t5_num_buckets": buckets,
            "t5_num_layers": 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks.")),
        }
    except KeyError as err:
        raise CheckpointError(f"{source} lacks {err}; is it {T5_FILE} in Wan's layout?") from err


