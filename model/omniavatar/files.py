"""Finding the official OmniAvatar / Wan2.1 / wav2vec2 files and reading them lazily.

What a user has (upstream's layout):
    Wan2.1-T2V-{14B,1.3B}/  diffusion_pytorch_model[-0000N-of-0000M].safetensors, Wan2.1_VAE.pth,
                            models_t5_umt5-xxl-enc-bf16.pth, google/umt5-xxl/ (tokenizer), config.json
    OmniAvatar-{14B,1.3B}/  pytorch_model.pt (LoRA pairs + audio modules + 33-channel patch embedding), config.json
    wav2vec2-base-960h/     a Wav2Vec2ForCTC checkpoint with config.json and preprocessor_config.json
Nothing is fetched from a hub; the pickles and safetensors are memory-mapped, and a tensor is read when used.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import Wav2Vec2Config
from transformers.utils import logging as transformers_logging

from model.omniavatar.convert import T5_FILE, CheckpointError

__all__ = ["CheckpointFiles", "LOAD_CHUNK_BYTES", "quiet_transformers", "read_json"]

DIT_SINGLE = "diffusion_pytorch_model.safetensors"
DIT_INDEX = "diffusion_pytorch_model.safetensors.index.json"
DIT_SHARD_RE = re.compile(r"^diffusion_pytorch_model-(\d+)-of-(\d+)\.safetensors$")
VAE_FILE = "Wan2.1_VAE.pth"
TOKENIZER_DIR = "google/umt5-xxl"
OMNI_WEIGHTS = "pytorch_model.pt"
LOAD_CHUNK_BYTES = 512 << 20  # DiT tensors assigned at a time


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars (e.g. the unused CTC head of wav2vec2-base-960h)."""
    verbosity, bars = transformers_logging.get_verbosity(), transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        if bars:
            transformers_logging.enable_progress_bar()


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read {path}: {err}") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    """A pickled state dict, memory-mapped when the file is in torch's zip format (the official files are)."""
    try:
        try:
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise CheckpointError(f"cannot load {path}: {err}") from err
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path} must hold a state dict, found {type(state).__name__}")
    return dict(state)


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise CheckpointError(f"missing {what}: {path} does not exist")
    return path


@dataclass
class CheckpointFiles:
    """The official files in three directories, found and checked for presence (nothing is read yet)."""

    base_dir: Path
    omniavatar_dir: Path
    wav2vec_dir: Path
    dit_shards: list[Path] = field(default_factory=list)

    @classmethod
    def find(cls, base_dir: Path | str, omniavatar_dir: Path | str, wav2vec_dir: Path | str) -> CheckpointFiles:
        """Locate every file; raise CheckpointError naming the first one that is missing."""
        base, omni, w2v = Path(base_dir), Path(omniavatar_dir), Path(wav2vec_dir)
        for directory, what in ((base, "Wan2.1-T2V base"), (omni, "OmniAvatar"), (w2v, "wav2vec2")):
            if not directory.is_dir():
                raise CheckpointError(f"the {what} directory {directory} does not exist")
        files = cls(base, omni, w2v, dit_shards=_find_dit_shards(base))
        for path, what in (
            (files.vae_path, "Wan VAE"),
            (files.t5_path, "UMT5 text encoder"),
            (files.tokenizer_dir, "UMT5 tokenizer folder"),
            (files.omniavatar_weights, "OmniAvatar weights"),
            (files.omniavatar_config_path, "OmniAvatar config"),
            (w2v / "config.json", "wav2vec2 config"),
            (w2v / "preprocessor_config.json", "wav2vec2 feature-extractor config"),
        ):
            _require(path, what)
        return files

    @property
    def vae_path(self) -> Path:
        return self.base_dir / VAE_FILE

    @property
    def t5_path(self) -> Path:
        return self.base_dir / T5_FILE

    @property
    def tokenizer_dir(self) -> Path:
        return self.base_dir / TOKENIZER_DIR

    @property
    def base_config_path(self) -> Path:
        return self.base_dir / "config.json"

    @property
    def omniavatar_weights(self) -> Path:
        return self.omniavatar_dir / OMNI_WEIGHTS

    @property
    def omniavatar_config_path(self) -> Path:
        return self.omniavatar_dir / "config.json"

    @cached_property
    def omniavatar_config(self) -> dict:
        return read_json(self.omniavatar_config_path)

    @cached_property
    def wav2vec_config(self) -> Wav2Vec2Config:
        with quiet_transformers():
            return Wav2Vec2Config.from_pretrained(self.wav2vec_dir, local_files_only=True)

    @cached_property
    def dit_index(self) -> dict[str, tuple[Path, tuple[int, ...]]]:
        """Key -> (file, shape) of every base DiT tensor, from the safetensors headers (no tensor is read)."""
        index: dict[str, tuple[Path, tuple[int, ...]]] = {}
        for path in self.dit_shards:
            with safe_open(path, framework="pt", device="cpu") as f:
                for key in f.keys():
                    if key in index:
                        raise CheckpointError(f"{key} is in both {index[key][0]} and {path}")
                    index[key] = (path, tuple(f.get_slice(key).get_shape()))
        return index

    @property
    def dit_shapes(self) -> dict[str, tuple[int, ...]]:
        return {key: shape for key, (_, shape) in self.dit_index.items()}

    @cached_property
    def omniavatar_state(self) -> dict[str, torch.Tensor]:
        return _torch_load(self.omniavatar_weights)

    @cached_property
    def vae_state(self) -> dict[str, torch.Tensor]:
        state = _torch_load(self.vae_path)
        return dict(state.get("model_state", state))  # some copies wrap the dict (as upstream accepts)

    @cached_property
    def t5_state(self) -> dict[str, torch.Tensor]:
        return _torch_load(self.t5_path)

    def iter_dit_tensors(self) -> Iterator[tuple[Path, dict[str, torch.Tensor]]]:
        """(shard, tensors) one shard at a time; tensors are read lazily from the file's memory map."""
        for path in self.dit_shards:
            with safe_open(path, framework="pt", device="cpu") as f:
                yield path, _LazyShard(f)


class _LazyShard(Mapping):
    """A read-only mapping over one open safetensors file that reads a tensor only when asked."""

    def __init__(self, handle):
        self._handle = handle
        self._keys = list(handle.keys())

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._handle.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def _find_dit_shards(base: Path) -> list[Path]:
    """The DiT weight files: an index's shards, the single 1.3B file, or the -0000N-of-0000M set."""
    index = base / DIT_INDEX
    if index.exists():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no weight_map")
        shards = sorted({base / name for name in weight_map.values()})
        for shard in shards:
            _require(shard, f"DiT shard listed in {index.name}")
        return shards
    if (base / DIT_SINGLE).exists():
        return [base / DIT_SINGLE]
    shards = sorted(p for p in base.iterdir() if DIT_SHARD_RE.match(p.name))
    if not shards:
        raise CheckpointError(
            f"no DiT weights in {base}: expected {DIT_SINGLE} (1.3B) or "
            "diffusion_pytorch_model-0000N-of-0000M.safetensors shards (14B)"
        )
    total = int(DIT_SHARD_RE.match(shards[0].name).group(2))
    found = {int(DIT_SHARD_RE.match(p.name).group(1)) for p in shards}
    missing = sorted(set(range(1, total + 1)) - found)
    if missing:
        raise CheckpointError(f"DiT shards {missing} of {total} are missing in {base}")
    return shards


