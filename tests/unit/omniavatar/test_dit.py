"""The OmniAvatar DiT: agreement with an independent float64 reference, audio injection, AudioPack, timestep numerics."""

from __future__ import annotations

import torch

from model.omniavatar.convert import split_omniavatar_state_dict
from model.omniavatar.dit import AudioPack, Float64Timesteps, OmniAvatarTransformer
from model.omniavatar.tiny import TINY

from .helpers import max_diff
from .reference import reference_dit


def segment_inputs(config, frames=2, height=4, width=6, seed=0):
    """Random DiT inputs for one segment of `frames` latent frames (batch 1)."""
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, 16, frames, height, width, generator=g)
    y = torch.cat([torch.randn(1, 16, frames, height, width, generator=g), torch.ones(1, 1, frames, height, width)], 1)
    y[:, 16, 0] = 0.0  # mask: frame 0 given
    context = torch.randn(1, config.text_len, config.text_dim, generator=g)
    context[:, 7:] = 0.0  # padded rows are zero
    audio = torch.randn(1, 4 * frames - 3, config.audio_dim, generator=g)
    return latents, y, context, audio


def test_loaded_dit_matches_the_float64_reference_with_unmerged_lora(tiny_models, tiny_files):
    """Conversion, merged LoRA, RoPE, audio injection and head against an independent float64 forward."""
    config = tiny_models.config
    latents, y, context, audio = segment_inputs(config, frames=3)
    timestep = 812.0
    with torch.no_grad():
        got = tiny_models.dit(torch.cat([latents, y], 1), torch.tensor([timestep]), context, audio)[0][0]
    pairs, full = split_omniavatar_state_dict(tiny_files.omniavatar_state)
    base = {key: tensor for _, shard in tiny_files.iter_dit_tensors() for key, tensor in shard.items()}
    weights = {**base, **full}
    lora = {k: (p.down, p.up) for k, p in pairs.items()}
    want = reference_dit(
        weights, lora, config.lora_scale, config.num_heads, latents[0], y[0], timestep, context[0], audio[0]
    )
    assert got.shape == want.shape, f"expected velocity shape {tuple(want.shape)}, found {tuple(got.shape)}"
    diff = max_diff(got, want)
    assert diff < 1e-5, f"merged-LoRA DiT differs from the unmerged float64 reference by {diff} (tolerance 1e-5)"


def test_audio_reaches_exactly_blocks_2_to_half(tiny_models):
    """Every block input minus the previous block's output is the audio term of its frame, or zero."""
    torch.manual_seed(0)
    model = OmniAvatarTransformer(
        num_attention_heads=2, attention_head_dim=24, text_dim=32, freq_dim=32, ffn_dim=96, num_layers=9,
        audio_dim=128, audio_hidden_size=8,
    ).eval()  # fmt: skip
    assert model.audio_layers == (2, 3, 4), f"expected audio blocks (2, 3, 4) for 9 layers, found {model.audio_layers}"
    frames, height, width = 3, 4, 6
    latents, y, context, audio = segment_inputs(TINY.updated(text_dim=32, audio_dim=128), frames, height, width)
    inputs, outputs = {}, {}
    hooks = []
    for i, block in enumerate(model.blocks):
        hooks.append(block.register_forward_pre_hook(lambda m, args, i=i: inputs.__setitem__(i, args[0].clone())))
        hooks.append(block.register_forward_hook(lambda m, args, out, i=i: outputs.__setitem__(i, out.clone())))
    with torch.no_grad():
        model(torch.cat([latents, y], 1), torch.tensor([500.0]), context, audio)
        packed = model.audio_proj(audio)  # (1, T, hidden)
        terms = {layer: model.audio_cond_projs[layer - 2](packed)[0] for layer in model.audio_layers}  # (T, D)
    for hook in hooks:
        hook.remove()
    tokens_per_frame = (height // 2) * (width // 2)
    for i in range(1, len(model.blocks)):
        added = (inputs[i] - outputs[i - 1])[0]  # (N, D)
        if i in terms:
            expected = terms[i].repeat_interleave(tokens_per_frame, dim=0)
            diff = max_diff(added, expected)
            assert diff < 1e-5, f"block {i}: added audio differs from projection {i - 2} of its frame by {diff}"
        else:
            assert added.abs().max().item() == 0.0, f"block {i} must receive no audio, found {added.abs().max()}"


def test_changing_audio_changes_the_output_and_batch_rows_are_independent(tiny_models):
    config = tiny_models.config
    latents, y, context, audio = segment_inputs(config)
    x = torch.cat([latents, y], 1)
    t = torch.tensor([700.0])
    with torch.no_grad():
        with_audio = tiny_models.dit(x, t, context, audio)[0]
        silent = tiny_models.dit(x, t, context, torch.zeros_like(audio))[0]
        batched = tiny_models.dit(x.repeat(2, 1, 1, 1, 1), t.repeat(2), context.repeat(2, 1, 1),
                                  torch.cat([audio, torch.zeros_like(audio)]))[0]  # fmt: skip
    assert max_diff(with_audio, silent) > 1e-3, "the audio window must change the velocity"
    diff = max(max_diff(batched[:1], with_audio), max_diff(batched[1:], silent))
    assert diff < 1e-5, f"a batch of 2 must equal two single forwards, differs by {diff} (tolerance 1e-5)"


def test_audio_pack_groups_frames_like_the_vae():
    """Latent 0 sees a[0] four times; latent f sees a[4f-3 .. 4f], frame-major then feature."""
    torch.manual_seed(0)
    pack = AudioPack(in_dim=5, hidden=8, group=4)
    audio = torch.randn(1, 9, 5)  # L = 9 -> T = 3
    with torch.no_grad():
        got = pack(audio)[0]
        for f, rows in enumerate([[0, 0, 0, 0], [1, 2, 3, 4], [5, 6, 7, 8]]):
            group = audio[0, rows].reshape(-1)  # (4 * 5,): frame-major
            want = pack.norm_out(pack.proj(group))
            diff = max_diff(got[f], want)
            assert diff < 1e-6, f"latent frame {f} should pack audio rows {rows}; differs by {diff}"


def test_timestep_is_rounded_to_bf16_before_a_float64_sinusoid():
    embed = Float64Timesteps(32)
    got = embed(torch.tensor([995.93]).to(torch.bfloat16))
    half = torch.pow(10000.0, -torch.arange(16, dtype=torch.float64) / 16)
    angles = 996.0 * half  # 995.93 rounds to 996 in bf16
    want = torch.cat([torch.cos(angles), torch.sin(angles)]).to(torch.bfloat16)
    assert got.dtype == torch.bfloat16, f"expected the embedding in the timestep's dtype bf16, found {got.dtype}"
    assert torch.equal(got[0], want), f"expected the float64 sinusoid of 996 cast to bf16, found {got[0]} vs {want}"


def test_audio_window_length_is_checked(tiny_models):
    latents, y, context, audio = segment_inputs(tiny_models.config)
    try:
        tiny_models.dit(torch.cat([latents, y], 1), torch.tensor([1.0]), context, audio[:, :-1])
    except ValueError as err:
        assert "expected 5" in str(err), f"the error should name the expected 5 rows, found: {err}"
    else:
        raise AssertionError("a 4-row audio window for 2 latent frames must raise ValueError")
