"""Checkpoint conversions: pure functions from the official layouts to the libraries' module names.

The Wan DiT and VAE use diffusers' own rename tables (`convert_wan_*_to_diffusers`); Wan's T5 layout maps to
transformers' UMT5EncoderModel by the table below; OmniAvatar's peft LoRA pairs (and any extra LoRA, see
`extra_lora.py`) are merged into their base weights, W + (alpha / rank)·B·A in float32. Every function takes
and returns state dicts and reads no file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

__all__ = [
    "CheckpointError",
    "LoraDelta",
    "LoraPair",
    "check_layout",
    "convert_dit_tensors",
    "convert_omniavatar_dit",
    "convert_umt5",
    "dit_key_map",
    "lora_targets",
    "merge_lora",
    "split_omniavatar_state_dict",
]

T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"

# Wan's T5 layout -> transformers' UMT5EncoderModel. `shared` and `encoder.embed_tokens` are one
# tied tensor in transformers; Wan stores it once as token_embedding.
UMT5_RENAMES: tuple[tuple[str, str], ...] = (
    (r"token_embedding\.weight", "shared.weight"),
    (r"blocks\.(\d+)\.norm1\.weight", r"encoder.block.\1.layer.0.layer_norm.weight"),
    (r"blocks\.(\d+)\.attn\.([qkvo])\.weight", r"encoder.block.\1.layer.0.SelfAttention.\2.weight"),
    (
        r"blocks\.(\d+)\.pos_embedding\.embedding\.weight",
        r"encoder.block.\1.layer.0.SelfAttention.relative_attention_bias.weight",
    ),
    (r"blocks\.(\d+)\.norm2\.weight", r"encoder.block.\1.layer.1.layer_norm.weight"),
    (r"blocks\.(\d+)\.ffn\.gate\.0\.weight", r"encoder.block.\1.layer.1.DenseReluDense.wi_0.weight"),  # gelu branch
    (r"blocks\.(\d+)\.ffn\.fc1\.weight", r"encoder.block.\1.layer.1.DenseReluDense.wi_1.weight"),  # linear branch
    (r"blocks\.(\d+)\.ffn\.fc2\.weight", r"encoder.block.\1.layer.1.DenseReluDense.wo.weight"),
    (r"norm\.weight", "encoder.final_layer_norm.weight"),
)
UMT5_TIED = {"shared.weight": "encoder.embed_tokens.weight"}

# peft LoRA names in OmniAvatar's pytorch_model.pt, with or without the adapter name `default`
LORA_RE = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(?:\.default)?\.weight$")


class CheckpointError(ValueError):
    """A model file is missing, malformed or does not match the model it should hold."""


def check_layout(
    found: Mapping[str, tuple[int, ...]],
    expected: Mapping[str, tuple[int, ...]],
    what: str,
    where: str | Path | Mapping[str, Path],
    skip_shape: Iterable[str] = (),
) -> None:
    """Raise CheckpointError unless `found` has exactly the keys of `expected`, with the same shapes.

    Args:
        what: what the tensors make up, e.g. "Wan2.1 DiT (1.3b: dim 1536, 30 layers)".
        where: the file, or key -> file for sharded checkpoints.
        skip_shape: keys whose shape is not checked (they are replaced later).
    """

    def file_of(key: str) -> str:
        return str(where.get(key, "?")) if isinstance(where, Mapping) else str(where)

    if isinstance(where, Mapping):
        files = sorted({str(p) for p in where.values()})
        source = ", ".join(files[:2]) + (f" (+{len(files) - 2} files)" if len(files) > 2 else "")
    else:
        source = str(where)
    missing = [k for k in expected if k not in found]
    if missing:
        more = f" and {len(missing) - 6} more" if len(missing) > 6 else ""
        raise CheckpointError(f"{source}: the {what} lacks {len(missing)} tensors: {', '.join(missing[:6])}{more}")
    unexpected = [k for k in found if k not in expected]
    if unexpected:
        more = f" and {len(unexpected) - 6} more" if len(unexpected) > 6 else ""
        raise CheckpointError(
            f"{file_of(unexpected[0])}: unexpected tensors for the {what}: {', '.join(unexpected[:6])}{more}"
        )
    skip = set(skip_shape)
    for key, shape in expected.items():
        if key not in skip and tuple(found[key]) != tuple(shape):
            raise CheckpointError(
                f"{file_of(key)}: {key} has shape {list(found[key])}, the {what} expects {list(shape)}"
            )


def dit_key_map(keys: Iterable[str]) -> dict[str, str]:
    """Wan-native DiT key -> diffusers key, by diffusers' own rename table (it swaps norm2/norm3: Wan's
    norm3 is the affine cross-attention norm that diffusers calls norm2). OmniAvatar's audio_* keys pass
    through unchanged."""
    renamed = convert_wan_transformer_to_diffusers({key: key for key in keys})  # values carry the source key
    return {source: target for target, source in renamed.items()}


@dataclass(frozen=True)
class LoraPair:
    down: torch.Tensor  # lora_A (rank, in)
    up: torch.Tensor  # lora_B (out, rank)


def split_omniavatar_state_dict(
    state: Mapping[str, torch.Tensor], source: str = "OmniAvatar checkpoint"
) -> tuple[dict[str, LoraPair], dict[str, torch.Tensor]]:
    """OmniAvatar's .pt -> (LoRA pairs keyed by the target weight name, e.g. 'blocks.0.self_attn.q.weight';
    full tensors). Names with and without peft's `.default` are accepted; a half pair is an error."""
    halves: dict[str, dict[str, torch.Tensor]] = {}
    full: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        match = LORA_RE.match(key)
        if match is None:
            full[key] = tensor
            continue
        slot = halves.setdefault(f"{match['module']}.weight", {})
        if match["which"] in slot:
            raise CheckpointError(f"{source}: lora_{match['which']} of {match['module']} appears twice ({key})")
        slot[match["which"]] = tensor
    pairs = {}
    for target, slot in halves.items():
        if set(slot) != {"A", "B"}:
            have, missing = next(iter(slot)), ({"A", "B"} - set(slot)).pop()
            raise CheckpointError(f"{source}: {target[: -len('.weight')]} has lora_{have} but no lora_{missing}")
        pairs[target] = LoraPair(down=slot["A"], up=slot["B"])
    return pairs, full


def lora_targets(keys: Iterable[str], targets: Iterable[str]) -> set[str]:
    """Weight names of the Linear layers peft would adapt: block modules whose name equals or ends with a target."""
    suffixes = tuple(targets)
    found = set()
    for key in keys:
        if not (key.startswith("blocks.") and key.endswith(".weight")):
            continue
        module = key[: -len(".weight")]
        if any(module.endswith("." + t) for t in suffixes):
            found.add(key)
    return found


@dataclass(frozen=True)
class LoraDelta:
    """What one LoRA adds to Wan-native DiT weights: W += scales[k]·B@A for each pair, W += diff_scale·D for
    each full difference (some published LoRAs carry norm weights and biases as plain differences)."""

    pairs: Mapping[str, LoraPair]
    scales: Mapping[str, float]
    diffs: Mapping[str, torch.Tensor] = field(default_factory=dict)
    diff_scale: float = 1.0

    @classmethod
    def uniform(cls, pairs: Mapping[str, LoraPair], scale: float) -> LoraDelta:
        return cls(pairs, dict.fromkeys(pairs, scale))

    @property
    def targets(self) -> set[str]:
        return set(self.pairs) | set(self.diffs)


def merge_lora(
    weights: Mapping[str, torch.Tensor], deltas: Sequence[LoraDelta], device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Every delta applied in order, in float32 on `device`, to the weights it targets; others pass unchanged.

    Args:
        weights: Wan-native tensors (any subset of the DiT).
        deltas: OmniAvatar's own LoRA first (scale lora_alpha / lora_rank, 0.5 for the official files), then
            any extra LoRA.
    """
    merged = {}
    for key, weight in weights.items():
        hits = [d for d in deltas if key in d.pairs or key in d.diffs]
        if not hits:
            merged[key] = weight
            continue
        w = weight.to(device=device, dtype=torch.float32, copy=True)
        for delta in hits:
            pair = delta.pairs.get(key)
            if pair is not None:
                up = pair.up.to(device=device, dtype=torch.float32)
                down = pair.down.to(device=device, dtype=torch.float32)
                w.addmm_(up, down, alpha=delta.scales[key])  # (out, in) += scale · (out, r) @ (r, in)
            if key in delta.diffs:
                w.add_(delta.diffs[key].to(device=device, dtype=torch.float32), alpha=delta.diff_scale)
        merged[key] = w
    return merged


def convert_dit_tensors(
    wan: Mapping[str, torch.Tensor], deltas: Sequence[LoraDelta] = (), device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Wan-native DiT tensors (any subset) -> diffusers names, with the LoRA deltas merged."""
    merged = merge_lora(wan, deltas, device)
    names = dit_key_map(merged)
    return {names[key]: tensor for key, tensor in merged.items()}


def convert_omniavatar_dit(
    base: Mapping[str, torch.Tensor],
    omniavatar: Mapping[str, torch.Tensor],
    scale: float,
    extra: Sequence[LoraDelta] = (),
) -> dict[str, torch.Tensor]:
    """Base Wan DiT + OmniAvatar checkpoint (+ extra LoRAs) -> diffusers-named state dict of `OmniAvatarTransformer`.

    OmniAvatar's full tensors replace base tensors of the same name (the 33-channel patch embedding replaces
    all its input channels) or add new ones (audio modules); LoRA pairs are merged into their base weights,
    OmniAvatar's first, then `extra` in order.
    """
    pairs, full = split_omniavatar_state_dict(omniavatar)
    return convert_dit_tensors({**base, **full}, [LoraDelta.uniform(pairs, scale), *extra])


def convert_umt5(state: Mapping[str, torch.Tensor], source: str = T5_FILE) -> dict[str, torch.Tensor]:
    """Wan's T5 encoder state dict -> `UMT5EncoderModel` names (the tied embedding appears under both names)."""
    converted = {}
    for key, tensor in state.items():
        for pattern, replacement in UMT5_RENAMES:
            if re.fullmatch(pattern, key):
                converted[re.sub(pattern, replacement, key)] = tensor
                break
        else:
            raise CheckpointError(f"{source}: unexpected key {key!r} for Wan's UMT5 encoder layout")
    for name, tied in UMT5_TIED.items():
        if name in converted:
            converted[tied] = converted[name]
    return converted
