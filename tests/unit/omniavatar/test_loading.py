"""Loading the official layouts: round trips, conversions, LoRA merge, config resolution and clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
from safetensors.torch import load_file, save_file

from model.omniavatar.config import CONFIGS
from model.omniavatar.convert import convert_omniavatar_dit, convert_umt5, dit_key_map, split_omniavatar_state_dict
from model.omniavatar.layouts import wan_dit_shapes
from model.omniavatar.loading import (
    CheckpointError,
    CheckpointFiles,
    build_transformer,
    load_text_encoder,
    load_transformer,
    match_shipped_config,
    resolve_config,
)
from model.omniavatar.tiny import TINY, write_tiny

from .helpers import max_diff


def files_of(dirs) -> CheckpointFiles:
    return CheckpointFiles.find(dirs.base_dir, dirs.omniavatar_dir, dirs.wav2vec_dir)


def load_dit(dirs, dtype=torch.float32):
    files = files_of(dirs)
    return load_transformer(files, resolve_config(files), dtype, "cpu")


def edit_pt(path, edit):
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


def edit_safetensors(path, edit):
    state = load_file(path)
    edit(state)
    save_file(state, path)


# -- round trips and conversions ---------------------------------------------------------------------------------


def test_dit_parameters_equal_the_files_with_lora_merged(tiny_models, tiny_files):
    pairs, full = split_omniavatar_state_dict(tiny_files.omniavatar_state)
    base = {k: t for _, shard in tiny_files.iter_dit_tensors() for k, t in shard.items()}
    wan = {**base, **full}
    names = dit_key_map(wan)
    params = tiny_models.dit.state_dict()
    scale = tiny_models.config.lora_scale
    for key, tensor in wan.items():
        want = tensor.float()
        if key in pairs:
            want = want + scale * pairs[key].up.float() @ pairs[key].down.float()
        diff = max_diff(params[names[key]], want)
        assert diff < 1e-6, f"{key} -> {names[key]}: loaded value differs from the file (LoRA merged) by {diff}"
    assert len(pairs) == 10 * TINY.num_layers, f"expected {10 * TINY.num_layers} LoRA pairs, found {len(pairs)}"


def test_dit_conversion_uses_every_source_key_and_fills_every_parameter(tiny_files, tiny_models):
    base = {k: t for _, shard in tiny_files.iter_dit_tensors() for k, t in shard.items()}
    omni = tiny_files.omniavatar_state
    converted = convert_omniavatar_dit(base, omni, 0.5)
    _, full = split_omniavatar_state_dict(omni)
    sources = set(base) | set(full)
    expected = {k: tuple(v.shape) for k, v in tiny_models.dit.state_dict().items()}
    assert len(converted) == len(sources), (
        f"expected {len(sources)} converted tensors (one per source key), found {len(converted)}"
    )
    assert set(converted) == set(expected), (
        f"missing {set(expected) - set(converted)}, extra {set(converted) - set(expected)}"
    )
    wrong = {k: (tuple(v.shape), expected[k]) for k, v in converted.items() if tuple(v.shape) != expected[k]}
    assert not wrong, f"converted shapes differ (found, expected): {wrong}"


def test_vae_conversion_uses_every_source_key_and_fills_every_parameter(tiny_files):
    state = tiny_files.vae_state
    converted = convert_wan_vae_to_diffusers(state)
    model = AutoencoderKLWan(base_dim=TINY.vae_base_dim)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(converted) == len(state), f"expected {len(state)} converted tensors, found {len(converted)}"
    assert set(converted) == set(expected), (
        f"missing {set(expected) - set(converted)}, extra {set(converted) - set(expected)}"
    )
    wrong = [k for k, v in converted.items() if tuple(v.shape) != expected[k]]
    assert not wrong, f"converted VAE tensors with wrong shapes: {wrong}"


def test_umt5_conversion_uses_every_source_key_and_fills_every_parameter(tiny_files, tiny_models):
    state = tiny_files.t5_state
    converted = convert_umt5(state)
    expected = {k: tuple(v.shape) for k, v in tiny_models.text_encoder.model.state_dict().items()}
    assert len(converted) == len(state) + 1, (
        f"expected {len(state)} tensors + the tied embedding, found {len(converted)}"
    )
    assert set(converted) == set(expected), (
        f"missing {set(expected) - set(converted)}, extra {set(converted) - set(expected)}"
    )
    wrong = [k for k, v in converted.items() if tuple(v.shape) != expected[k]]
    assert not wrong, f"converted UMT5 tensors with wrong shapes: {wrong}"


def test_sharded_layout_and_peft_names_without_default_load_the_same_weights(tmp_path, tiny_models):
    dirs = write_tiny(tmp_path, sharded=True, peft_default=False)
    shards = sorted(p.name for p in dirs.base_dir.glob("diffusion_pytorch_model-*.safetensors"))
    assert len(shards) == 3, f"expected 3 shards + index, found {shards}"
    dit = load_dit(dirs)
    want = tiny_models.dit.state_dict()
    for key, value in dit.state_dict().items():
        diff = max_diff(value, want[key])
        assert diff == 0.0, f"{key}: the sharded / '.default'-less load differs from the reference load by {diff}"


def test_umt5_is_assigned_from_the_memory_map_without_a_copy(tiny_files, tiny_models):
    encoder = load_text_encoder(tiny_files, tiny_models.config, torch.bfloat16, "cpu")  # the file is bf16
    source = tiny_files.t5_state["token_embedding.weight"]
    weight = encoder.model.shared.weight
    assert weight.data_ptr() == source.data_ptr(), "the bf16 token embedding should be the memory-mapped tensor itself"
    assert encoder.model.encoder.embed_tokens.weight.data_ptr() == weight.data_ptr(), (
        "embed_tokens must stay tied to shared"
    )


def test_bf16_load_casts_weights_but_not_the_rope_tables(tiny_dirs):
    dit = load_dit(tiny_dirs, torch.bfloat16)
    dtypes = {p.dtype for p in dit.parameters()}
    assert dtypes == {torch.bfloat16}, f"expected only bf16 parameters, found {dtypes}"
    # diffusers computes the tables in float64 and keeps them in float32; bf16 tables would lose positions
    assert dit.rope.freqs_cos.dtype == torch.float32, f"RoPE tables must stay float32, found {dit.rope.freqs_cos.dtype}"


# -- model dimensions -----------------------------------------------------------------------------------------------


def test_dims_come_from_config_json_of_either_folder(tmp_path, tiny_files):
    want = resolve_config(tiny_files)
    assert want.dim == 48 and want.num_heads == 2 and want.in_dim == 33, f"unexpected tiny config {want}"
    dirs = write_tiny(tmp_path)
    (dirs.base_dir / "config.json").unlink()  # dims now only in OmniAvatar's model_config
    got = resolve_config(files_of(dirs))
    assert got == want, f"expected the same config from OmniAvatar's model_config alone, found {got} vs {want}"


def test_without_declared_dims_an_unknown_size_is_an_error(tmp_path):
    dirs = write_tiny(tmp_path)
    (dirs.base_dir / "config.json").unlink()
    path = dirs.omniavatar_dir / "config.json"
    config = json.loads(path.read_text())
    config["model_config"] = {"in_dim": 33, "audio_hidden_size": 8}
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="cannot tell the DiT size"):
        resolve_config(files_of(dirs))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_shipped_configs_are_matched_by_tensor_shapes(name):
    shapes = wan_dit_shapes(CONFIGS[name])
    matched = match_shipped_config(shapes)
    assert matched is CONFIGS[name], f"expected the {name} config for its own shapes, found {matched}"
    assert match_shipped_config(wan_dit_shapes(TINY)) is None, "tiny shapes must match no shipped config"


def test_shipped_configs_build_the_published_parameter_counts():
    """The published sizes: 1 418 996 800 (1.3B) and 14 288 491 584 (14B) base parameters."""
    for name, count in (("1.3b", 1_418_996_800), ("14b", 14_288_491_584)):
        shapes = wan_dit_shapes(CONFIGS[name])
        total = sum(torch.Size(s).numel() for s in shapes.values())
        assert total == count, f"{name}: expected {count} base DiT parameters, the layout gives {total}"
        with torch.device("meta"):
            model = build_transformer(CONFIGS[name].updated(in_dim=16))
        built = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("audio_"))
        assert built == count, f"{name}: expected {count} parameters in the built DiT (without audio), found {built}"


# -- errors --------------------------------------------------------------------------------------------------------


def test_wrong_shape_in_a_dit_file_names_file_key_and_shapes(tmp_path):
    dirs = write_tiny(tmp_path)
    path = dirs.base_dir / "diffusion_pytorch_model.safetensors"
    edit_safetensors(path, lambda s: s.__setitem__("blocks.1.ffn.0.weight", torch.zeros(95, 48)))
    with pytest.raises(CheckpointError) as err:
        load_dit(dirs)
    for part in (str(path), "blocks.1.ffn.0.weight", "[95, 48]", "[96, 48]"):
        assert part in str(err.value), f"the error should name {part!r}, found: {err.value}"


def test_missing_dit_tensor_is_named(tmp_path):
    dirs = write_tiny(tmp_path, sharded=True)
    shard = sorted(dirs.base_dir.glob("diffusion_pytorch_model-*.safetensors"))[1]
    victim = next(iter(load_file(shard)))
    edit_safetensors(shard, lambda s: s.pop(victim))
    with pytest.raises(CheckpointError, match=f"lacks 1 tensors: {victim}"):
        load_dit(dirs)


def test_missing_lora_pair_is_refused(tmp_path):
    dirs = write_tiny(tmp_path)
    edit_pt(
        dirs.omniavatar_dir / "pytorch_model.pt",
        lambda s: [s.pop(k) for k in list(s) if k.startswith("blocks.3.ffn.2.lora")],
    )
    with pytest.raises(CheckpointError, match="1 of 40 LoRA pairs are missing"):
        load_dit(dirs)


def test_half_lora_pair_is_refused(tmp_path):
    dirs = write_tiny(tmp_path)
    edit_pt(dirs.omniavatar_dir / "pytorch_model.pt", lambda s: s.pop("blocks.0.self_attn.q.lora_B.default.weight"))
    with pytest.raises(CheckpointError, match="blocks.0.self_attn.q has lora_A but no lora_B"):
        load_dit(dirs)


def test_missing_audio_tensor_is_refused(tmp_path):
    dirs = write_tiny(tmp_path)
    edit_pt(dirs.omniavatar_dir / "pytorch_model.pt", lambda s: s.pop("audio_cond_projs.0.bias"))
    with pytest.raises(
        CheckpointError, match=r"required OmniAvatar tensors are missing: \['audio_cond_projs.0.bias'\]"
    ):
        load_dit(dirs)


def test_wrong_shape_in_the_omniavatar_checkpoint_names_key_and_shapes(tmp_path):
    dirs = write_tiny(tmp_path)
    edit_pt(
        dirs.omniavatar_dir / "pytorch_model.pt", lambda s: s.__setitem__("audio_proj.proj.weight", torch.zeros(8, 100))
    )
    with pytest.raises(CheckpointError) as err:
        load_dit(dirs)
    for part in ("pytorch_model.pt", "audio_proj.proj.weight", "[8, 100]", "[8, 512]"):
        assert part in str(err.value), f"the error should name {part!r}, found: {err.value}"


def test_lora_rank_must_match_the_config(tmp_path):
    dirs = write_tiny(tmp_path)
    path = dirs.omniavatar_dir / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "lora_rank": 8}))
    with pytest.raises(CheckpointError, match="rank 8"):
        load_dit(dirs)


def test_missing_files_are_named(tmp_path):
    dirs = write_tiny(tmp_path, sharded=True)
    sorted(dirs.base_dir.glob("diffusion_pytorch_model-*.safetensors"))[2].unlink()
    with pytest.raises(CheckpointError, match="DiT shard listed in"):
        files_of(dirs)
    dirs = write_tiny(tmp_path / "b")
    (dirs.base_dir / "Wan2.1_VAE.pth").unlink()
    with pytest.raises(CheckpointError, match="missing Wan VAE"):
        files_of(dirs)
