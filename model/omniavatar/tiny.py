"""Writes tiny random OmniAvatar model folders in exactly the official layout (for tests and the CPU demo).

    python -m model.omniavatar.tiny OUT_DIR [--sharded]

produces what a user's download looks like, with tiny dimensions and random weights:
    OUT_DIR/Wan2.1-T2V-tiny/     DiT in Wan-native key names (one safetensors file, or 14B-style shards +
                                 index with --sharded), Wan2.1_VAE.pth, models_t5_umt5-xxl-enc-bf16.pth in
                                 Wan's T5 layout, google/umt5-xxl/tokenizer.json, config.json (Wan's format)
    OUT_DIR/OmniAvatar-tiny/     pytorch_model.pt (peft-named LoRA pairs + full tensors), config.json
    OUT_DIR/wav2vec2-base-960h/  a Wav2Vec2ForCTC checkpoint with config.json and preprocessor_config.json
The tensor names and shapes come from the published layouts (`layouts.py`), not from the conversions, so loading
these folders into diffusers' and transformers' modules tests the conversions. Writing takes a fraction of a second.
"""

from __future__ import annotations

import argparse
import io
import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from model.omniavatar.config import OmniAvatarConfig
from model.omniavatar.layouts import lora_shapes, omniavatar_full_shapes, wan_dit_shapes, wan_t5_shapes, wan_vae_shapes
from model.omniavatar.loading import quiet_transformers

__all__ = ["TINY", "TinyDirs", "random_tensor", "random_tensors", "write_tiny"]

TINY = OmniAvatarConfig(
    name="tiny",
    # dit: head_dim 24 keeps Wan's and diffusers' splits of the head channels over the 3 RoPE axes in agreement
    dim=48,
    ffn_dim=96,
    num_heads=2,
    num_layers=4,
    freq_dim=32,
    text_dim=32,
    audio_hidden_size=8,
    # lora
    lora_rank=4,
    lora_alpha=2.0,  # scale 0.5, as the official 128 / 64
    # vae
    vae_base_dim=4,
    # text
    t5_dim=32,
    t5_ffn_dim=64,
    t5_num_heads=2,
    t5_num_layers=2,
    # audio: (2 wav2vec2 layers + 2) x hidden 32
    audio_dim=128,
)
TINY_WAV2VEC = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
TINY_WAV2VEC_CONV_DIM = 16

TOKENIZER_SENTENCES = (
    "A realistic video of a man speaking directly to the camera on a sofa, with dynamic and rhythmic hand gestures.",
    "A woman talks to the camera and smiles. The camera remains steady.",
    "Vivid color tones, background/camera moving quickly, screen switching, subtitles and special effects, mutation, "
    "overexposed, static, blurred details, subtitles, style, work, painting, image, still, overall grayish, worst "
    "quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, poorly drawn hands, poorly "
    "drawn face, deformed, disfigured, malformed limbs, fingers merging, motionless image, chaotic background, three "
    "legs, crowded background with many people, walking backward",
)


def random_tensor(
    name: str, shape: tuple[int, ...], generator: torch.Generator, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """One random weight that keeps activations in range: norm scales ~1, small biases, N(0, 1/fan_in) matrices."""
    noise = torch.randn(shape, generator=generator, device=device)
    leaf = name.rsplit(".", 1)[0].rsplit(".", 1)[-1]  # the module's own name: norm3, norm_q, gamma, ...
    if name.endswith("gamma") or (leaf.startswith("norm") and name.endswith(".weight")):
        return 1.0 + 0.1 * noise  # RMS / LayerNorm scales
    if name.endswith("modulation"):
        return noise / math.sqrt(shape[-1])
    if len(shape) == 1:
        return 0.02 * noise  # biases
    if name == "token_embedding.weight" or "pos_embedding" in name:
        return 0.5 * noise
    return noise / math.sqrt(math.prod(shape[1:]))


def random_tensors(shapes: dict[str, tuple[int, ...]], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """`random_tensor` for every name in `shapes`, in order."""
    return {name: random_tensor(name, shape, generator) for name, shape in shapes.items()}


class TinyDirs:
    """The three folders a tiny model is written to (and that a config's `options` point at)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.base_dir = self.root / "Wan2.1-T2V-tiny"
        self.omniavatar_dir = self.root / "OmniAvatar-tiny"
        self.wav2vec_dir = self.root / "wav2vec2-base-960h"


def write_tiny(
    root: Path | str, config: OmniAvatarConfig = TINY, sharded: bool = False, peft_default: bool = True, seed: int = 0
) -> TinyDirs:
    """Write the three tiny model folders under `root` and return their paths.

    Args:
        root: output folder (created).
        config: tiny dimensions (default `TINY`).
        sharded: write the DiT as 14B-style shards with an index instead of one 1.3B-style file.
        peft_default: name LoRA pairs `lora_A.default.weight` (peft) or `lora_A.weight`.
        seed: seed of the random weights.
    """
    dirs = TinyDirs(root)
    for d in (dirs.base_dir, dirs.omniavatar_dir, dirs.wav2vec_dir):
        d.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)

    vocab = _write_tokenizer(dirs.base_dir / "google" / "umt5-xxl")
    config = config.updated(t5_vocab=vocab)
    _write_dit(dirs.base_dir, config, random_tensors(wan_dit_shapes(config), generator), sharded)
    torch.save(
        random_tensors(wan_vae_shapes(config.vae_base_dim, config.vae_z_dim), generator),
        dirs.base_dir / "Wan2.1_VAE.pth",
    )
    t5 = {k: v.to(torch.bfloat16) for k, v in random_tensors(wan_t5_shapes(config), generator).items()}
    torch.save(t5, dirs.base_dir / "models_t5_umt5-xxl-enc-bf16.pth")
    _write_json(
        dirs.base_dir / "config.json",
        {
            "_class_name": "WanModel",
            "model_type": "t2v",
            "dim": config.dim,
            "eps": config.eps,
            "ffn_dim": config.ffn_dim,
            "freq_dim": config.freq_dim,
            "in_dim": 16,
            "num_heads": config.num_heads,
            "num_layers": config.num_layers,
            "out_dim": config.out_dim,
            "text_len": config.text_len,
            "text_dim": config.text_dim,
        },
    )

    omni = random_tensors({**omniavatar_full_shapes(config), **lora_shapes(config, peft_default)}, generator)
    torch.save(omni, dirs.omniavatar_dir / "pytorch_model.pt")
    _write_json(
        dirs.omniavatar_dir / "config.json",
        {
            "i2v": True,
            "use_audio": True,
            "random_prefix_frames": True,
            "model_config": {
                "in_dim": config.in_dim,
                "audio_hidden_size": config.audio_hidden_size,
                "dim": config.dim,
                "ffn_dim": config.ffn_dim,
                "num_heads": config.num_heads,
                "num_layers": config.num_layers,
                "freq_dim": config.freq_dim,
                "text_dim": config.text_dim,
            },
            "train_architecture": "lora",
            "lora_target_modules": ",".join(config.lora_targets),
            "init_lora_weights": "kaiming",
            "lora_rank": config.lora_rank,
            "lora_alpha": config.lora_alpha,
        },
    )
    _write_wav2vec(dirs.wav2vec_dir, seed)
    return dirs


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _write_dit(base_dir: Path, config: OmniAvatarConfig, tensors: dict[str, torch.Tensor], sharded: bool) -> None:
    if not sharded:
        save_file(tensors, base_dir / "diffusion_pytorch_model.safetensors")
        return
    keys, count = list(tensors), 3
    per_shard = math.ceil(len(keys) / count)
    weight_map = {}
    for i in range(count):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{count:05d}.safetensors"
        part = {k: tensors[k] for k in keys[i * per_shard : (i + 1) * per_shard]}
        save_file(part, base_dir / name)
        weight_map |= dict.fromkeys(part, name)
    total = sum(t.nbytes for t in tensors.values())
    _write_json(
        base_dir / "diffusion_pytorch_model.safetensors.index.json",
        {"metadata": {"total_size": total}, "weight_map": weight_map},
    )


def _write_tokenizer(folder: Path) -> int:
    """A sentencepiece unigram model trained on a few sentences, saved as tokenizer.json; returns its size."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TOKENIZER_SENTENCES * 4),
        model_writer=model,
        vocab_size=128,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(folder)
    return len(vocab)


def _write_wav2vec(folder: Path, seed: int) -> None:
    """A tiny Wav2Vec2ForCTC with the real conv geometry (so 640 samples give 2 conv frames) and extractor."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    config = Wav2Vec2Config(
        **TINY_WAV2VEC,
        conv_dim=(TINY_WAV2VEC_CONV_DIM,) * 7,
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_bias=False,
        feat_extract_norm="group",
        do_stable_layer_norm=False,
        num_conv_pos_embeddings=128,
        num_conv_pos_embedding_groups=16,
        vocab_size=32,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Wav2Vec2ForCTC(config)
    with quiet_transformers():
        model.save_pretrained(folder)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=False
    ).save_pretrained(folder)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write tiny random OmniAvatar model folders (official layout).")
    parser.add_argument(
        "out_dir", type=Path, help="folder that receives Wan2.1-T2V-tiny/, OmniAvatar-tiny/, wav2vec2-base-960h/"
    )
    parser.add_argument("--sharded", action="store_true", help="write the DiT as shards + index (14B layout)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    dirs = write_tiny(args.out_dir, sharded=args.sharded, seed=args.seed)
    print(f"wrote {dirs.base_dir}, {dirs.omniavatar_dir}, {dirs.wav2vec_dir}")


if __name__ == "__main__":
    main()
