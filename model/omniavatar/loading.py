"""Loading the official OmniAvatar / Wan2.1 / wav2vec2 files into the four networks.

The files are found by `files.py`, the model dimensions read by `dims.py`; every network is built on the meta
device and filled by assignment (`assign.py`), tensor by tensor from memory-mapped files, so peak host memory
stays near one copy of the weights. The DiT goes through the pure converter of `convert.py` (diffusers' rename
table, LoRAs merged in float32), shard chunk by shard chunk. Every source key must be used and every target
parameter filled with the right shape, or loading fails naming the file, the key, and the expected and found
shapes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed
from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel, Wav2Vec2FeatureExtractor, Wav2Vec2Model

from model.omniavatar.assign import Filler, describe, no_meta_left
from model.omniavatar.audio_encoder import AudioEncoder
from model.omniavatar.config import ExtraLora, OmniAvatarConfig
from model.omniavatar.convert import (
    CheckpointError,
    LoraDelta,
    LoraPair,
    check_layout,
    convert_dit_tensors,
    convert_umt5,
    dit_key_map,
    lora_targets,
    split_omniavatar_state_dict,
)
from model.omniavatar.dims import match_shipped_config, resolve_config
from model.omniavatar.dit import OmniAvatarTransformer
from model.omniavatar.extra_lora import lora_delta, read_lora_file
from model.omniavatar.files import LOAD_CHUNK_BYTES, CheckpointFiles, quiet_transformers
from model.omniavatar.layouts import omniavatar_full_shapes, wan_dit_shapes, wan_t5_shapes, wan_vae_shapes
from model.omniavatar.text_encoder import TextEncoder
from model.omniavatar.vae import WanVAE

__all__ = [
    "CheckpointError",
    "CheckpointFiles",
    "LoadedModels",
    "assemble_transformer",
    "assemble_vae",
    "build_transformer",
    "load_models",
    "load_text_encoder",
    "load_transformer",
    "match_shipped_config",
    "resolve_config",
]

logger = logging.getLogger(__name__)  # load stages, shown by /health while a replica loads


def load_transformer(
    files: CheckpointFiles,
    config: OmniAvatarConfig,
    dtype: torch.dtype,
    device: torch.device | str,
    extra_loras: Sequence[ExtraLora] = (),
) -> OmniAvatarTransformer:
    """The DiT: base shards streamed one at a time, OmniAvatar tensors overlaid, LoRAs merged at load
    (OmniAvatar's, then each of `extra_loras` in order, in float32) by `convert_dit_tensors`."""
    source = str(files.omniavatar_weights)
    base_layout = wan_dit_shapes(config)
    where = {key: path for key, (path, _) in files.dit_index.items()}
    check_layout(files.dit_shapes, base_layout, f"Wan2.1 DiT ({describe(config)})", where, ["patch_embedding.weight"])
    pairs, full = split_omniavatar_state_dict(files.omniavatar_state, source)
    check_omniavatar_tensors(files, config, pairs, full)
    shapes = {**files.dit_shapes, **{k: tuple(t.shape) for k, t in full.items()}}
    deltas = [LoraDelta.uniform(pairs, config.lora_scale)]
    for lora in extra_loras:
        logger.info("reading the extra LoRA %s (strength %g)", lora.path.name, lora.strength)
        deltas.append(lora_delta(read_lora_file(lora.path), shapes, lora.strength, str(lora.path)))

    def chunks() -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
        for number, (shard, tensors) in enumerate(files.iter_dit_tensors(), start=1):
            logger.info("loading the DiT: %s (%d of %d), LoRA merged", shard.name, number, len(files.dit_shards))
            chunk, size = {}, 0
            for key in tensors:
                if key in full:  # replaced by OmniAvatar (the 16-channel patch embedding)
                    continue
                chunk[key] = tensors[key]
                size += chunk[key].nbytes
                if size >= LOAD_CHUNK_BYTES:  # a few tensors at a time: peak host memory ~ one copy of the weights
                    yield str(shard), chunk
                    chunk, size = {}, 0
            yield str(shard), chunk
        yield source, dict(full)

    return assemble_transformer(config, chunks(), deltas, dtype, device, f"{files.base_dir} + {files.omniavatar_dir}")


def assemble_transformer(
    config: OmniAvatarConfig,
    chunks: Iterable[tuple[str, Mapping[str, torch.Tensor]]],
    deltas: Sequence[LoraDelta],
    dtype: torch.dtype,
    device: torch.device | str,
    source: str,
) -> OmniAvatarTransformer:
    """Build the DiT on meta and fill it from (file, Wan-native tensors) chunks through `convert_dit_tensors`
    (diffusers' names, `deltas` merged); every parameter must be filled exactly once."""
    with torch.device("meta"):
        model = build_transformer(config)
    filler = Filler(model, f"{config.name} DiT", dtype, device)
    for where, chunk in chunks:
        names = dit_key_map(chunk)
        filler.fill(convert_dit_tensors(chunk, deltas, device), where, {names[k]: k for k in chunk})
    filler.finish(source)
    model.rope = WanRotaryPosEmbed(config.head_dim, config.patch_size, model.config.rope_max_seq_len).to(device)
    no_meta_left(model, "DiT")
    return model.eval().requires_grad_(False)


def build_transformer(config: OmniAvatarConfig) -> OmniAvatarTransformer:
    """An `OmniAvatarTransformer` with `config`'s dimensions (random weights unless built on meta)."""
    return OmniAvatarTransformer(
        patch_size=tuple(config.patch_size),
        num_attention_heads=config.num_heads,
        attention_head_dim=config.head_dim,
        in_channels=config.in_dim,
        out_channels=config.out_dim,
        text_dim=config.text_dim,
        freq_dim=config.freq_dim,
        ffn_dim=config.ffn_dim,
        num_layers=config.num_layers,
        eps=config.eps,
        audio_dim=config.audio_dim,
        audio_hidden_size=config.audio_hidden_size,
        audio_group=config.audio_group,
    )


def check_omniavatar_tensors(
    files: CheckpointFiles, config: OmniAvatarConfig, pairs: Mapping[str, LoraPair], full: Mapping[str, torch.Tensor]
) -> None:
    """Every targeted Linear has a LoRA pair of rank `lora_rank`, and the full tensors are present."""
    source = str(files.omniavatar_weights)
    targets = lora_targets(files.dit_shapes, config.lora_targets)
    missing = sorted(targets - set(pairs))
    if missing:
        raise CheckpointError(
            f"{source}: {len(missing)} of {len(targets)} LoRA pairs are missing (e.g. "
            f"{missing[0][: -len('.weight')]}.lora_A.default.weight); refusing to run without them"
        )
    extra = sorted(set(pairs) - targets)
    if extra:
        raise CheckpointError(
            f"{source}: LoRA pairs for layers that are not targets {list(config.lora_targets)}: {extra[:4]}"
        )
    for target, pair in pairs.items():
        out_features, in_features = files.dit_shapes[target]
        want_a, want_b = (config.lora_rank, in_features), (out_features, config.lora_rank)
        if tuple(pair.down.shape) != want_a or tuple(pair.up.shape) != want_b:
            raise CheckpointError(
                f"{source}: LoRA pair of {target} has A {list(pair.down.shape)}, B {list(pair.up.shape)}; expected "
                f"A {list(want_a)}, B {list(want_b)} (rank {config.lora_rank} from {files.omniavatar_config_path})"
            )
    required = omniavatar_full_shapes(config)
    absent = [k for k in required if k not in full]
    if absent:
        raise CheckpointError(f"{source}: required OmniAvatar tensors are missing: {absent}; refusing to run")
    base = files.dit_shapes
    for key, tensor in full.items():
        want = required.get(key, base.get(key))
        if want is None:
            raise CheckpointError(
                f"{source}: unexpected tensor {key!r}: neither an OmniAvatar module nor a base DiT tensor"
            )
        if tuple(tensor.shape) != tuple(want):
            raise CheckpointError(
                f"{source}: {key} has shape {list(tensor.shape)}, expected {list(want)} ({describe(config)}, "
                f"in_dim {config.in_dim}, audio {config.audio_dim} -> {config.audio_hidden_size})"
            )


def load_vae(files: CheckpointFiles, config: OmniAvatarConfig, dtype: torch.dtype, device) -> WanVAE:
    """Wan2.1_VAE.pth -> `WanVAE` (diffusers' AutoencoderKLWan, converted by diffusers' rename table)."""
    logger.info("loading the VAE: %s", files.vae_path.name)
    state = files.vae_state
    layout = wan_vae_shapes(config.vae_base_dim, config.vae_z_dim)
    check_layout({k: tuple(v.shape) for k, v in state.items()}, layout, "Wan VAE", files.vae_path)
    return assemble_vae(state, config, dtype, device, str(files.vae_path))


def assemble_vae(
    state: Mapping[str, torch.Tensor], config: OmniAvatarConfig, dtype: torch.dtype, device, source: str
) -> WanVAE:
    """Wan-layout VAE tensors -> `WanVAE` (diffusers' AutoencoderKLWan, converted by diffusers' rename table)."""
    converted = convert_wan_vae_to_diffusers(dict(state))
    with torch.device("meta"):
        model = AutoencoderKLWan(base_dim=config.vae_base_dim, z_dim=config.vae_z_dim)
    filler = Filler(model, "Wan VAE", dtype, device)
    filler.fill(converted, source)
    filler.finish(source)
    no_meta_left(model, "VAE")
    vae = WanVAE(
        model, config.vae_encode_tile, config.vae_encode_stride, config.vae_decode_tile, config.vae_decode_stride
    )
    return vae.to(device).eval().requires_grad_(False)


def load_text_encoder(files: CheckpointFiles, config: OmniAvatarConfig, dtype: torch.dtype, device) -> TextEncoder:
    """The 11 GB UMT5 encoder: built on meta, filled by assignment from the memory-mapped .pth."""
    logger.info("loading the text encoder: %s", files.t5_path.name)
    state = files.t5_state
    check_layout({k: tuple(v.shape) for k, v in state.items()}, wan_t5_shapes(config), "UMT5 encoder", files.t5_path)
    umt5 = UMT5Config(
        vocab_size=config.t5_vocab,
        d_model=config.t5_dim,
        d_kv=config.t5_dim // config.t5_num_heads,
        d_ff=config.t5_ffn_dim,
        num_layers=config.t5_num_layers,
        num_heads=config.t5_num_heads,
        relative_attention_num_buckets=config.t5_num_buckets,
        relative_attention_max_distance=config.t5_max_distance,
        feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6,
        dropout_rate=0.0,
        is_encoder_decoder=False,
        use_cache=False,
    )
    with torch.device("meta"):
        model = UMT5EncoderModel(umt5)
    filler = Filler(model, "UMT5 encoder", dtype, device)
    filler.fill(convert_umt5(state, str(files.t5_path)), str(files.t5_path))
    filler.finish(str(files.t5_path))
    model.set_input_embeddings(model.shared)  # keep the two names one tensor
    no_meta_left(model, "UMT5 encoder")
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(files.tokenizer_dir, local_files_only=True)
    return TextEncoder(model.eval().requires_grad_(False), tokenizer, config.text_len)


def load_audio_encoder(files: CheckpointFiles, device, fps: int = 25) -> AudioEncoder:
    """wav2vec2-base-960h (a Wav2Vec2ForCTC checkpoint; the CTC head is unused) in float32."""
    logger.info("loading the audio encoder: %s", files.wav2vec_dir.name)
    with quiet_transformers():
        model = Wav2Vec2Model.from_pretrained(files.wav2vec_dir, local_files_only=True, dtype=torch.float32)
        extractor = Wav2Vec2FeatureExtractor.from_pretrained(files.wav2vec_dir, local_files_only=True)
    return AudioEncoder(model.to(device).eval().requires_grad_(False), extractor, fps)


@dataclass
class LoadedModels:
    """Everything the segment loop needs, on one device."""

    config: OmniAvatarConfig
    dit: OmniAvatarTransformer
    vae: WanVAE
    text_encoder: TextEncoder | None  # None when a shared text encoder serves the prompts
    audio_encoder: AudioEncoder
    dtype: torch.dtype
    device: torch.device


def load_models(
    files: CheckpointFiles,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    fps: int = 25,
    extra_loras: Sequence[ExtraLora] = (),
    text_encoder_device: str | None = None,
    dit_device: str | None = None,
    text_encoder: bool = True,
) -> LoadedModels:
    """Resolve the dimensions and load all four networks (DiT, VAE and T5 in `dtype`; wav2vec2 in float32).

    `device` runs the segment loop; the text encoder may live on `text_encoder_device` (it runs once per
    prompt) and the DiT's weights on `dit_device` (the CPU, for group offloading); with `text_encoder` False it
    is not loaded at all (a shared encoder elsewhere serves the prompts).
    """
    config = resolve_config(files)
    logger.info("OmniAvatar %s: dim %d, %d layers, %s on %s", config.name, config.dim, config.num_layers, dtype, device)
    dev = torch.device(device)
    models = LoadedModels(
        config=config,
        dit=load_transformer(files, config, dtype, torch.device(dit_device or device), extra_loras),
        vae=load_vae(files, config, dtype, dev),
        text_encoder=load_text_encoder(files, config, dtype, torch.device(text_encoder_device or device))
        if text_encoder
        else None,
        audio_encoder=load_audio_encoder(files, dev, fps),
        dtype=dtype,
        device=dev,
    )
    width = models.audio_encoder.embed_dim
    if width != config.audio_dim:
        raise CheckpointError(f"{files.wav2vec_dir}: embedding width {width}, the DiT expects {config.audio_dim}")
    for path in ("omniavatar_state", "vae_state", "t5_state"):
        files.__dict__.pop(path, None)  # drop our references to the memory maps (the models keep what they use)
    return models
