"""The official tensor layouts: names and shapes of every file's tensors.

Wan-native DiT, OmniAvatar's full tensors and peft LoRA pairs, Wan's VAE and Wan's
UMT5 encoder, as functions of an `OmniAvatarConfig`. The loader checks the files against these before
converting (so errors use the names a user sees in the files); the tiny writer writes exactly these.
"""

from __future__ import annotations

from model.omniavatar.config import OmniAvatarConfig

__all__ = [
    "lora_shapes",
    "omniavatar_full_shapes",
    "wan_dit_shapes",
    "wan_t5_shapes",
    "wan_vae_shapes",
]

Shapes = dict[str, tuple[int, ...]]


def wan_dit_shapes(config: OmniAvatarConfig, in_dim: int = 16) -> Shapes:
    """Wan-native names and shapes of a Wan2.1 T2V DiT; `in_dim` 16 for the base model."""
    d, f, pt, ph, pw = config.dim, config.ffn_dim, *config.patch_size
    shapes = {
        "patch_embedding.weight": (d, in_dim, pt, ph, pw),
        "patch_embedding.bias": (d,),
        "text_embedding.0.weight": (d, config.text_dim),
        "text_embedding.0.bias": (d,),
        "text_embedding.2.weight": (d, d),
        "text_embedding.2.bias": (d,),
        "time_embedding.0.weight": (d, config.freq_dim),
        "time_embedding.0.bias": (d,),
        "time_embedding.2.weight": (d, d),
        "time_embedding.2.bias": (d,),
        "time_projection.1.weight": (6 * d, d),
        "time_projection.1.bias": (6 * d,),
    }
    for n in range(config.num_layers):
        block = f"blocks.{n}"
        shapes[f"{block}.modulation"] = (1, 6, d)
        for attn in ("self_attn", "cross_attn"):
            for proj in "qkvo":
                shapes[f"{block}.{attn}.{proj}.weight"] = (d, d)
                shapes[f"{block}.{attn}.{proj}.bias"] = (d,)
            shapes[f"{block}.{attn}.norm_q.weight"] = (d,)
            shapes[f"{block}.{attn}.norm_k.weight"] = (d,)
        shapes[f"{block}.norm3.weight"] = (d,)
        shapes[f"{block}.norm3.bias"] = (d,)
        shapes[f"{block}.ffn.0.weight"] = (f, d)
        shapes[f"{block}.ffn.0.bias"] = (f,)
        shapes[f"{block}.ffn.2.weight"] = (d, f)
        shapes[f"{block}.ffn.2.bias"] = (d,)
    shapes["head.modulation"] = (1, 2, d)
    shapes["head.head.weight"] = (config.out_dim * pt * ph * pw, d)
    shapes["head.head.bias"] = (config.out_dim * pt * ph * pw,)
    return shapes


def omniavatar_full_shapes(config: OmniAvatarConfig) -> Shapes:
    """The full (non-LoRA) tensors of OmniAvatar's pytorch_model.pt."""
    d, hidden = config.dim, config.audio_hidden_size
    shapes = {
        "patch_embedding.weight": (d, config.in_dim, *config.patch_size),
        "patch_embedding.bias": (d,),
        "audio_proj.proj.weight": (hidden, config.audio_group * config.audio_dim),
        "audio_proj.proj.bias": (hidden,),
        "audio_proj.norm_out.weight": (hidden,),
        "audio_proj.norm_out.bias": (hidden,),
    }
    for k in range(len(config.audio_layers)):
        shapes[f"audio_cond_projs.{k}.weight"] = (d, hidden)
        shapes[f"audio_cond_projs.{k}.bias"] = (d,)
    return shapes


def lora_shapes(config: OmniAvatarConfig, peft_default: bool = True) -> Shapes:
    """peft names and shapes of the LoRA pairs on q,k,v,o (both attentions), ffn.0 and ffn.2 of every block."""
    adapter = ".default" if peft_default else ""
    d, f, r = config.dim, config.ffn_dim, config.lora_rank
    layers = {
        **{f"{a}.{p}": (d, d) for a in ("self_attn", "cross_attn") for p in "qkvo"},
        "ffn.0": (f, d),
        "ffn.2": (d, f),
    }
    shapes = {}
    for n in range(config.num_layers):
        for name, (out_features, in_features) in layers.items():
            shapes[f"blocks.{n}.{name}.lora_A{adapter}.weight"] = (r, in_features)
            shapes[f"blocks.{n}.{name}.lora_B{adapter}.weight"] = (out_features, r)
    return shapes


def _residual(prefix: str, c_in: int, c_out: int) -> Shapes:
    shapes = {
        f"{prefix}.residual.0.gamma": (c_in, 1, 1, 1),
        f"{prefix}.residual.2.weight": (c_out, c_in, 3, 3, 3),
        f"{prefix}.residual.2.bias": (c_out,),
        f"{prefix}.residual.3.gamma": (c_out, 1, 1, 1),
        f"{prefix}.residual.6.weight": (c_out, c_out, 3, 3, 3),
        f"{prefix}.residual.6.bias": (c_out,),
    }
    if c_in != c_out:
        shapes[f"{prefix}.shortcut.weight"] = (c_out, c_in, 1, 1, 1)
        shapes[f"{prefix}.shortcut.bias"] = (c_out,)
    return shapes


def _middle(prefix: str, c: int) -> Shapes:
    return {
        **_residual(f"{prefix}.0", c, c),
        f"{prefix}.1.norm.gamma": (c, 1, 1),
        f"{prefix}.1.to_qkv.weight": (3 * c, c, 1, 1),
        f"{prefix}.1.to_qkv.bias": (3 * c,),
        f"{prefix}.1.proj.weight": (c, c, 1, 1),
        f"{prefix}.1.proj.bias": (c,),
        **_residual(f"{prefix}.2", c, c),
    }


def _resample(prefix: str, c_in: int, c_out: int, temporal: bool, up: bool) -> Shapes:
    shapes = {f"{prefix}.resample.1.weight": (c_out, c_in, 3, 3), f"{prefix}.resample.1.bias": (c_out,)}
    if temporal:
        c_time = 2 * c_in if up else c_in  # upsample3d doubles channels into two frames
        shapes[f"{prefix}.time_conv.weight"] = (c_time, c_in, 3, 1, 1)
        shapes[f"{prefix}.time_conv.bias"] = (c_time,)
    return shapes


def wan_vae_shapes(base_dim: int = 96, z_dim: int = 16) -> Shapes:
    """Wan2.1_VAE.pth names and shapes: widths b, 2b, 4b, 4b; temporal down at 2nd/3rd."""
    b = base_dim
    shapes = {"encoder.conv1.weight": (b, 3, 3, 3, 3), "encoder.conv1.bias": (b,)}
    # encoder: (Res, Res, down) x 3 levels + (Res, Res)
    widths, index = [b, b, 2 * b, 4 * b, 4 * b], 0
    for level, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        for _ in range(2):
            shapes |= _residual(f"encoder.downsamples.{index}", c_in, c_out)
            c_in, index = c_out, index + 1
        if level < 3:
            shapes |= _resample(f"encoder.downsamples.{index}", c_out, c_out, temporal=level > 0, up=False)
            index += 1
    shapes |= _middle("encoder.middle", 4 * b)
    shapes |= {"encoder.head.0.gamma": (4 * b, 1, 1, 1), "encoder.head.2.weight": (2 * z_dim, 4 * b, 3, 3, 3)}
    shapes |= {"encoder.head.2.bias": (2 * z_dim,)}
    shapes |= {"conv1.weight": (2 * z_dim, 2 * z_dim, 1, 1, 1), "conv1.bias": (2 * z_dim,)}
    shapes |= {"conv2.weight": (z_dim, z_dim, 1, 1, 1), "conv2.bias": (z_dim,)}
    # decoder: conv1, middle, (Res x 3, up) x 3 levels + Res x 3; levels after the first start at half width
    shapes |= {"decoder.conv1.weight": (4 * b, z_dim, 3, 3, 3), "decoder.conv1.bias": (4 * b,)}
    shapes |= _middle("decoder.middle", 4 * b)
    widths, index = [4 * b, 4 * b, 4 * b, 2 * b, b], 0
    for level, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        c_in = c_in // 2 if level > 0 else c_in
        for _ in range(3):
            shapes |= _residual(f"decoder.upsamples.{index}", c_in, c_out)
            c_in, index = c_out, index + 1
        if level < 3:
            shapes |= _resample(f"decoder.upsamples.{index}", c_out, c_out // 2, temporal=level < 2, up=True)
            index += 1
    shapes |= {"decoder.head.0.gamma": (b, 1, 1, 1), "decoder.head.2.weight": (3, b, 3, 3, 3)}
    shapes |= {"decoder.head.2.bias": (3,)}
    return shapes


def wan_t5_shapes(config: OmniAvatarConfig) -> Shapes:
    """Wan's UMT5-XXL encoder layout at `config`'s sizes."""
    d, ff = config.t5_dim, config.t5_ffn_dim
    shapes = {"token_embedding.weight": (config.t5_vocab, d)}
    for i in range(config.t5_num_layers):
        shapes |= {
            f"blocks.{i}.norm1.weight": (d,),
            **{f"blocks.{i}.attn.{p}.weight": (d, d) for p in "qkvo"},
            f"blocks.{i}.pos_embedding.embedding.weight": (config.t5_num_buckets, config.t5_num_heads),
            f"blocks.{i}.norm2.weight": (d,),
            f"blocks.{i}.ffn.gate.0.weight": (ff, d),
            f"blocks.{i}.ffn.fc1.weight": (ff, d),
            f"blocks.{i}.ffn.fc2.weight": (d, ff),
        }
    shapes["norm.weight"] = (d,)
    return shapes
