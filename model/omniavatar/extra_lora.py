"""Extra LoRA files (step-distillation LoRAs and the like) in the layouts they are published in.

Each file becomes a `LoraDelta` on Wan-native DiT names, merged at load after OmniAvatar's own LoRA:
W += strength · (alpha / rank) · B @ A. Layouts read:

| layout | down (A) / up (B) | alpha |
| --- | --- | --- |
| ComfyUI, lightx2v | `diffusion_model.<module>.lora_A.weight` / `.lora_B.weight` (or `lora_down` / `lora_up`) | `diffusion_model.<module>.alpha` |
| kohya | `lora_unet_<module with _ for .>.lora_down.weight` / `.lora_up.weight` | `lora_unet_<...>.alpha` |
| PEFT | `base_model.model.<module>.lora_A[.default].weight` / `lora_B` | none: alpha = rank |

`<module>` is a Wan-native module name such as `blocks.0.self_attn.q`. A missing alpha means alpha = rank
(scale 1). ComfyUI-style files may also carry full differences, `<module>.diff` (weight) and `.diff_b`
(bias), added as strength · D. Every key must name a DiT tensor of a matching shape, or loading fails
naming the key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file

from model.omniavatar.convert import CheckpointError, LoraDelta, LoraPair

__all__ = ["lora_delta", "read_lora_file"]

PREFIXES = ("diffusion_model.", "base_model.model.", "transformer.", "model.")
KOHYA_PREFIX = "lora_unet_"
PART_RE = re.compile(
    r"^(?P<module>.+?)\.(?:(?P<ab>lora_[AB])(?:\.default)?\.weight|(?P<du>lora_(?:down|up))\.weight"
    r"|(?P<alpha>alpha)|(?P<diff>diff)|(?P<diff_b>diff_b))$"
)


def read_lora_file(path: Path) -> dict[str, torch.Tensor]:
    """A LoRA state dict from .safetensors, or a torch pickle (.pt, .pth, .bin)."""
    if not path.is_file():
        raise CheckpointError(f"extra LoRA {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any read failure is a bad file for the user
        raise CheckpointError(f"cannot read extra LoRA {path}: {err}") from err
    if not isinstance(state, Mapping):
        raise CheckpointError(f"extra LoRA {path} must hold a state dict, found {type(state).__name__}")
    return dict(state)


def _module_names(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, str]:
    """Every DiT module name, and its kohya spelling (dots as underscores), -> the module name."""
    modules = {key.rsplit(".", 1)[0] for key in shapes}
    return {**{m: m for m in modules}, **{KOHYA_PREFIX + m.replace(".", "_"): m for m in modules}}


def _split_key(key: str) -> tuple[str, re.Match] | None:
    for prefix in PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix) :]
            break
    match = PART_RE.match(key)
    return (match["module"], match) if match else None


def lora_delta(
    state: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple[int, ...]], strength: float, source: str
) -> LoraDelta:
    """One LoRA file's state dict -> its delta on the Wan-native DiT tensors `shapes` (name -> shape)."""
    modules = _module_names(shapes)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        split = _split_key(key)
        module = modules.get(split[0]) if split else None
        if module is None:
            raise CheckpointError(
                f"{source}: key {key!r} names no module of the DiT (expected e.g. "
                "diffusion_model.blocks.0.self_attn.q.lora_A.weight, lora_unet_blocks_0_self_attn_q.lora_down.weight "
                "or base_model.model.blocks.0.self_attn.q.lora_A.weight)"
            )
        match = split[1]
        part = {"lora_A": "down", "lora_B": "up", "lora_down": "down", "lora_up": "up"}.get(match["ab"] or match["du"])
        part = part or next(name for name in ("alpha", "diff", "diff_b") if match[name])
        slot = parts.setdefault(module, {})
        if part in slot:
            raise CheckpointError(f"{source}: {part} of {module} is given twice (again as {key!r})")
        slot[part] = tensor
    pairs, scales, diffs = {}, {}, {}
    for module, slot in sorted(parts.items()):
        if "diff" in slot:
            diffs[_target(shapes, f"{module}.weight", slot["diff"].shape, source)] = slot["diff"]
        if "diff_b" in slot:
            diffs[_target(shapes, f"{module}.bias", slot["diff_b"].shape, source)] = slot["diff_b"]
        if not ({"down", "up"} & set(slot)):
            if "alpha" in slot:
                raise CheckpointError(f"{source}: {module} has an alpha but no LoRA pair")
            continue
        if set(slot) & {"down", "up"} != {"down", "up"}:
            have = "down (A)" if "down" in slot else "up (B)"
            raise CheckpointError(f"{source}: {module} has only the {have} half of its LoRA pair")
        down, up = slot["down"], slot["up"]
        rank = down.shape[0]
        if down.ndim != 2 or up.ndim != 2 or up.shape[1] != rank:
            raise CheckpointError(
                f"{source}: {module} LoRA pair has A {list(down.shape)}, B {list(up.shape)}; expected A (r, in), B (out, r)"
            )
        target = _target(shapes, f"{module}.weight", (up.shape[0], down.shape[1]), source)
        alpha = float(slot["alpha"]) if "alpha" in slot else float(rank)
        pairs[target] = LoraPair(down=down, up=up)
        scales[target] = strength * alpha / rank
    return LoraDelta(pairs, scales, diffs, diff_scale=strength)


def _target(shapes: Mapping[str, tuple[int, ...]], key: str, shape, source: str) -> str:
    want = shapes.get(key)
    if want is None:
        raise CheckpointError(f"{source}: the DiT has no tensor {key} for this LoRA's entry")
    if tuple(want) != tuple(shape):
        raise CheckpointError(f"{source}: {key} is {list(want)} in the DiT, the LoRA changes it as {list(shape)}")
    return key
