"""Extra LoRAs: every published layout merges as W + strength·(alpha / rank)·B@A after OmniAvatar's own LoRA."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from model.omniavatar.config import ExtraLora
from model.omniavatar.convert import CheckpointError, dit_key_map
from model.omniavatar.loading import load_transformer, resolve_config

from .helpers import max_diff

RANK = 2
MODULES = {"blocks.0.self_attn.q": (48, 48), "blocks.1.ffn.0": (96, 48)}  # Wan-native name -> (out, in)


def lora_tensors(seed=0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {m: (torch.randn(RANK, i, generator=g), torch.randn(o, RANK, generator=g)) for m, (o, i) in MODULES.items()}


def layout(name: str, pairs, alpha: float) -> dict[str, torch.Tensor]:
    """The pairs written under one published naming scheme."""
    state = {}
    for module, (down, up) in pairs.items():
        if name == "comfyui":
            prefix, a, b, alpha_key = f"diffusion_model.{module}", "lora_A.weight", "lora_B.weight", "alpha"
        elif name == "comfyui-down-up":
            prefix, a, b, alpha_key = f"diffusion_model.{module}", "lora_down.weight", "lora_up.weight", "alpha"
        elif name == "kohya":
            prefix, a, b, alpha_key = "lora_unet_" + module.replace(".", "_"), "lora_down.weight", "lora_up.weight", "alpha"
        else:  # peft: no alpha in the weights file
            prefix, a, b, alpha_key = f"base_model.model.{module}", "lora_A.weight", "lora_B.weight", None
        state[f"{prefix}.{a}"], state[f"{prefix}.{b}"] = down, up
        if alpha_key:
            state[f"{prefix}.{alpha_key}"] = torch.tensor(alpha)
    return state


def load_with(tiny_files, *loras: ExtraLora):
    return load_transformer(tiny_files, resolve_config(tiny_files), torch.float32, "cpu", loras)


@pytest.mark.parametrize("name", ["comfyui", "comfyui-down-up", "kohya", "peft"])
def test_each_layout_merges_strength_alpha_over_rank(name, tiny_files, tiny_models, tmp_path):
    pairs, alpha, strength = lora_tensors(), 8.0, 0.5
    path = tmp_path / f"{name}.safetensors"
    save_file(layout(name, pairs, alpha), path)
    dit = load_with(tiny_files, ExtraLora(path, strength))
    names = dit_key_map([f"{m}.weight" for m in MODULES])
    scale = strength * (alpha if name != "peft" else RANK) / RANK
    got, base = dit.state_dict(), tiny_models.dit.state_dict()
    for module, (down, up) in pairs.items():
        key = names[f"{module}.weight"]
        diff = max_diff(got[key], base[key] + scale * up @ down)
        assert diff < 1e-5, f"{name}: {module} differs from W + {scale}·B@A by {diff}"
    untouched = dit_key_map(["blocks.0.self_attn.k.weight"])["blocks.0.self_attn.k.weight"]
    assert torch.equal(got[untouched], base[untouched]), "a weight without a pair must not change"


def test_full_differences_and_two_loras_apply_in_order(tiny_files, tiny_models, tmp_path):
    first, second = lora_tensors(1), lora_tensors(2)
    state = layout("comfyui", first, 2.0)
    diff_b = torch.randn(48)
    state["diffusion_model.blocks.0.self_attn.q.diff_b"] = diff_b
    save_file(state, tmp_path / "a.safetensors")
    torch.save(layout("kohya", second, 4.0), tmp_path / "b.pt")
    dit = load_with(tiny_files, ExtraLora(tmp_path / "a.safetensors", 1.0), ExtraLora(tmp_path / "b.pt", 2.0))
    names = dit_key_map(["blocks.0.self_attn.q.weight", "blocks.0.self_attn.q.bias"])
    got, base = dit.state_dict(), tiny_models.dit.state_dict()
    weight, bias = names["blocks.0.self_attn.q.weight"], names["blocks.0.self_attn.q.bias"]
    (d1, u1), (d2, u2) = first["blocks.0.self_attn.q"], second["blocks.0.self_attn.q"]
    want = base[weight] + 1.0 * (2.0 / RANK) * u1 @ d1 + 2.0 * (4.0 / RANK) * u2 @ d2
    assert max_diff(got[weight], want) < 1e-5, f"two LoRAs must add up, differ by {max_diff(got[weight], want)}"
    assert max_diff(got[bias], base[bias] + diff_b) < 1e-6, "diff_b must be added to the bias"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.update({"diffusion_model.blocks.0.self_attn.nope.lora_A.weight": torch.zeros(2, 48)}), "nope"),
        (lambda s: s.update({"lora_unet_blocks_9_ffn_0.lora_down.weight": torch.zeros(2, 48)}), "blocks_9"),
        (lambda s: s.pop("diffusion_model.blocks.1.ffn.0.lora_B.weight"), "only the down"),
        (lambda s: s.update({"diffusion_model.blocks.1.ffn.0.lora_B.weight": torch.zeros(48, 2)}), r"\[96, 48\]"),
    ],
)
def test_unmatched_keys_and_broken_pairs_are_named(edit, message, tiny_files, tmp_path):
    state = layout("comfyui", lora_tensors(), 2.0)
    edit(state)
    save_file(state, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match=message):
        load_with(tiny_files, ExtraLora(tmp_path / "bad.safetensors"))
