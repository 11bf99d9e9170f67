"""Check a downloaded model folder before a replica tries to load it: files present, sizes, tensor shapes.

    python -m model.omniavatar.verify /models [--config configs/omniavatar-14b.yaml]

Reads only file headers and memory maps (no network is built, no GPU is needed, a few seconds even for
14B) and runs the checks the loader runs: the same file discovery, the same layouts and the same
LoRA / audio-module checks. Prints one line per check and exits 1 at the first failure, naming the file.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path

from model.config import load_model_config, resolve_path
from model.omniavatar.config import OmniAvatarOptions
from model.omniavatar.convert import CheckpointError, check_layout, split_omniavatar_state_dict
from model.omniavatar.layouts import wan_dit_shapes, wan_t5_shapes, wan_vae_shapes
from model.omniavatar.loading import CheckpointFiles, check_omniavatar_tensors, resolve_config

CONFIGS = {"Wan2.1-T2V-14B": "configs/omniavatar-14b.yaml", "Wan2.1-T2V-1.3B": "configs/omniavatar-1.3b.yaml"}


def safetensors_problem(path: Path) -> str | None:
    """None when the file is exactly as long as its header says (a cut download is not), else why not."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{path}: {size} bytes, too short for a safetensors file"
        (header_len,) = struct.unpack("<Q", head)
        try:
            header = json.loads(f.read(header_len))
        except ValueError:
            return f"{path}: its safetensors header is unreadable (a cut or corrupt download)"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    expected = 8 + header_len + end
    return None if size == expected else f"{path}: {size} bytes, its header says {expected} (a cut or corrupt download)"


def _size(paths: list[Path]) -> str:
    total = sum(p.stat().st_size for p in paths)
    return f"{total / 1e9:.2f} GB" if total >= 1e8 else f"{total / 1e6:.2f} MB"


def verify(model_dir: Path, config_path: str) -> list[str]:
    """The report lines; raises CheckpointError at the first problem."""
    options = OmniAvatarOptions.from_dict({**load_model_config(config_path).options, "model_dir": str(model_dir)}, resolve_path)
    lines = []
    # 1. Presence
    files = CheckpointFiles.find(options.base_dir, options.omniavatar_dir, options.wav2vec_dir)
    weights = sorted(p for p in options.wav2vec_dir.iterdir() if p.suffix in (".safetensors", ".bin"))
    if not weights:
        raise CheckpointError(f"missing wav2vec2 weights: no model.safetensors or pytorch_model.bin in {options.wav2vec_dir}")
    lines.append(f"files: {len(files.dit_shards)} DiT file(s), VAE, UMT5 and tokenizer in {files.base_dir.name}; "
                 f"weights and config in {files.omniavatar_dir.name}; {weights[0].name} in {files.wav2vec_dir.name}")  # fmt: skip
    # 2. Sizes: safetensors files against their headers; the pickled ones open as state dicts below
    for path in [*files.dit_shards, *(p for p in weights if p.suffix == ".safetensors")]:
        if problem := safetensors_problem(path):
            raise CheckpointError(problem)
    lines.append(f"sizes: DiT {_size(files.dit_shards)}, UMT5 {_size([files.t5_path])}, VAE {_size([files.vae_path])}, "
                 f"OmniAvatar {_size([files.omniavatar_weights])}, wav2vec2 {_size(weights)}; every safetensors file whole")  # fmt: skip
    # 3. Shapes, as the loader checks them
    config = resolve_config(files)
    where = {key: path for key, (path, _) in files.dit_index.items()}
    check_layout(files.dit_shapes, wan_dit_shapes(config), f"Wan2.1 DiT ({config.name})", where, ["patch_embedding.weight"])
    lines.append(f"DiT: {len(files.dit_shapes)} tensors of {config.name} (dim {config.dim}, {config.num_layers} layers, {config.num_heads} heads)")
    pairs, full = split_omniavatar_state_dict(files.omniavatar_state, str(files.omniavatar_weights))
    check_omniavatar_tensors(files, config, pairs, full)
    lines.append(f"OmniAvatar: {len(pairs)} LoRA pairs of rank {config.lora_rank}, {len(full)} audio and input tensors")
    vae = {k: tuple(v.shape) for k, v in files.vae_state.items()}
    check_layout(vae, wan_vae_shapes(config.vae_base_dim, config.vae_z_dim), "Wan VAE", files.vae_path)
    t5 = {k: tuple(v.shape) for k, v in files.t5_state.items()}
    check_layout(t5, wan_t5_shapes(config), "UMT5 encoder", files.t5_path)
    lines.append(f"VAE: {len(vae)} tensors; UMT5: {len(t5)} tensors, {config.t5_num_layers} layers; wav2vec2 width {config.audio_dim}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.omniavatar.verify", description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", type=Path, help="the folder holding the three downloads ($OMNIAVATAR_MODEL_DIR)")
    parser.add_argument("--config", help="the model config naming the folders (default: by the Wan2.1 folder found)")
    args = parser.parse_args(argv)
    config = args.config or next((c for name, c in CONFIGS.items() if (args.model_dir / name).is_dir()), None)
    if config is None:
        print(f"FAIL  {args.model_dir} holds neither {' nor '.join(CONFIGS)} (or pass --config)", file=sys.stderr)
        return 1
    print(f"checking {args.model_dir} for {config}")
    try:
        for line in verify(args.model_dir, config):
            print(f"ok    {line}")
    except (CheckpointError, ValueError, OSError) as error:
        print(f"FAIL  {error}", file=sys.stderr)
        return 1
    print(f"{args.model_dir} is complete: serve it with OMNIAVATAR_MODEL_DIR={args.model_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
