"""Loading the official OmniAvatar / Wan2.1 / wav2vec2 files: discovery, model dimensions, conversion, assignment.

What a user has (upstream layout, spec §13.2):
    Wan2.1-T2V-{14B,1.3B}/  diffusion_pytorch_model[-0000N-of-0000M].safetensors, Wan2.1_VAE.pth,
                            models_t5_umt5-xxl-enc-bf16.pth, google/umt5-xxl/ (tokenizer), config.json
    OmniAvatar-{14B,1.3B}/  pytorch_model.pt (LoRA pairs + audio modules + 33-channel patch embedding), config.json
    wav2vec2-base-960h/     a Wav2Vec2ForCTC checkpoint with config.json and preprocessor_config.json

Every network is built on the meta device and filled by assignment, tensor by tensor from memory-mapped
files, so peak host memory stays near one copy of the weights. Conversions are pure functions driven by
rename tables; every source key must be used and every target parameter filled with the right shape, or
loading fails naming the file, the key, and the expected and found shapes. Nothing is fetched from a hub.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed
from safetensors import safe_open
from torch import nn
from transformers import (
    AutoTokenizer,
    UMT5Config,
    UMT5EncoderModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
)
from transformers.utils import logging as transformers_logging

from model.omniavatar.audio_encoder import AudioEncoder
from model.omniavatar.config import CONFIGS, OmniAvatarConfig
from model.omniavatar.convert import (
    T5_FILE,
    CheckpointError,
    LoraPair,
    check_layout,
    convert_umt5,
    dit_key_map,
    lora_targets,
    merge_lora,
    split_omniavatar_state_dict,
)
from model.omniavatar.dit import OmniAvatarTransformer
from model.omniavatar.layouts import omniavatar_full_shapes, wan_dit_shapes, wan_t5_shapes, wan_vae_shapes
from model.omniavatar.text_encoder import TextEncoder
from model.omniavatar.vae import WanVAE

__all__ = [
    "CheckpointError",
    "CheckpointFiles",
    "LoadedModels",
    "build_transformer",
    "load_models",
    "load_text_encoder",
    "load_transformer",
    "match_shipped_config",
    "resolve_config",
]

logger = logging.getLogger(__name__)  # load stages, shown by /health while a replica loads

DIT_SINGLE = "diffusion_pytorch_model.safetensors"
DIT_INDEX = "diffusion_pytorch_model.safetensors.index.json"
DIT_SHARD_RE = re.compile(r"^diffusion_pytorch_model-(\d+)-of-(\d+)\.safetensors$")
VAE_FILE = "Wan2.1_VAE.pth"
TOKENIZER_DIR = "google/umt5-xxl"
OMNI_WEIGHTS = "pytorch_model.pt"
LOAD_CHUNK_BYTES = 512 << 20

# DiT fields a config.json may set (Wan's config.json and OmniAvatar's `model_config` use these names)
DECLARABLE_DIT_FIELDS = (
    "dim", "ffn_dim", "num_heads", "num_layers", "freq_dim", "text_dim", "in_dim", "out_dim", "eps",
    "patch_size", "audio_hidden_size", "text_len",
)  # fmt: skip


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


# ---------------------------------------------------------------------------------------------------------------
# Files


def _read_json(path: Path) -> dict:
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
        return _read_json(self.omniavatar_config_path)

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
        return dict(state.get("model_state", state))  # some copies wrap the dict (wan_video_vae.py:801-807)

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
        weight_map = _read_json(index).get("weight_map")
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


# ---------------------------------------------------------------------------------------------------------------
# Model dimensions


def dit_dims_from_shapes(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
    """The DiT dimensions that the base Wan tensors reveal (everything but the head count)."""
    try:
        return {
            "dim": shapes["patch_embedding.weight"][0],
            "ffn_dim": shapes["blocks.0.ffn.0.weight"][0],
            "num_layers": 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("blocks.")),
            "freq_dim": shapes["time_embedding.0.weight"][1],
            "text_dim": shapes["text_embedding.0.weight"][1],
            "out_dim": shapes["head.head.weight"][0] // 4,
        }
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"the base DiT lacks a Wan2.1 tensor ({err}); is this a Wan2.1-T2V checkpoint?") from err


def match_shipped_config(shapes: Mapping[str, tuple[int, ...]]) -> OmniAvatarConfig | None:
    """The shipped config (1.3b / 14b) whose DiT dimensions equal those of `shapes`, or None."""
    dims = dit_dims_from_shapes(shapes)
    for config in CONFIGS.values():
        if all(getattr(config, name) == value for name, value in dims.items()):
            return config
    return None


def _declared_dit_fields(files: CheckpointFiles) -> dict:
    """DiT fields from Wan's config.json, then OmniAvatar's `model_config` (which wins, as upstream)."""
    declared: dict = {}
    layers = []
    if files.base_config_path.exists():
        layers.append((files.base_config_path, _read_json(files.base_config_path)))
    omni = files.omniavatar_config
    model_config = omni.get("model_config") or {}
    if not isinstance(model_config, dict):
        raise CheckpointError(f"{files.omniavatar_config_path}: model_config must be an object")
    layers.append((files.omniavatar_config_path, model_config))
    for path, values in layers:
        if values.get("model_type", "t2v") != "t2v" or values.get("has_image_input"):
            raise CheckpointError(f"{path} describes a {values.get('model_type')} model; OmniAvatar needs Wan2.1-T2V")
        declared.update({k: values[k] for k in DECLARABLE_DIT_FIELDS if k in values})
    if "patch_size" in declared:
        declared["patch_size"] = tuple(declared["patch_size"])
    return declared


def resolve_config(files: CheckpointFiles) -> OmniAvatarConfig:
    """Model dimensions for the files a user points at.

    DiT: the directories' own config.json values (Wan's, then OmniAvatar's `model_config`) win; the shipped
    config whose dimensions the DiT tensors match fills the rest. LoRA rank/alpha/targets come from
    OmniAvatar's config.json. The VAE, T5 and wav2vec2 widths are read from their own files (Wan ships no
    config for the first two). Every value is checked against the tensors when they are loaded.
    """
    declared = _declared_dit_fields(files)
    shipped = match_shipped_config(files.dit_shapes)
    if shipped is None and "num_heads" not in declared:
        found = dit_dims_from_shapes(files.dit_shapes)
        known = {name: (c.dim, c.ffn_dim, c.num_layers) for name, c in CONFIGS.items()}
        raise CheckpointError(
            f"cannot tell the DiT size in {files.base_dir}: no config.json gives num_heads and its tensors "
            f"(dim, ffn_dim, num_layers) = {(found['dim'], found['ffn_dim'], found['num_layers'])} match no shipped "
            f"config {known}"
        )
    base = shipped or OmniAvatarConfig(name="custom").updated(**dit_dims_from_shapes(files.dit_shapes))
    config = base.updated(**declared)
    if config != shipped:  # named after the folder unless it is exactly a shipped config
        config = config.updated(name=files.base_dir.name)

    omni = files.omniavatar_config
    lora = {}
    if "lora_rank" in omni:
        lora["lora_rank"] = int(omni["lora_rank"])
    if "lora_alpha" in omni:
        lora["lora_alpha"] = float(omni["lora_alpha"])
    if "lora_target_modules" in omni:
        lora["lora_targets"] = tuple(t.strip() for t in str(omni["lora_target_modules"]).split(",") if t.strip())
    if omni.get("train_architecture", "lora") != "lora":
        raise CheckpointError(f"{files.omniavatar_config_path}: train_architecture must be 'lora'")

    w2v = files.wav2vec_config
    return config.updated(
        **lora,
        **vae_dims(files.vae_state, files.vae_path),
        **t5_dims(files.t5_state, files.t5_path),
        audio_dim=(w2v.num_hidden_layers + 2) * w2v.hidden_size,
    )


def vae_dims(state: Mapping[str, torch.Tensor], source: Path | str) -> dict[str, int]:
    """VAE widths from Wan's VAE tensors: base width (encoder.conv1 outputs) and latent channels (conv2)."""
    try:
        return {"vae_base_dim": state["encoder.conv1.weight"].shape[0], "vae_z_dim": state["conv2.weight"].shape[0]}
    except KeyError as err:
        raise CheckpointError(f"{source} lacks {err}; is it Wan2.1_VAE.pth?") from err


def t5_dims(state: Mapping[str, torch.Tensor], source: Path | str) -> dict[str, int]:
    """UMT5 encoder sizes from Wan's T5 tensors (heads = columns of the relative-position table)."""
    try:
        vocab, width = state["token_embedding.weight"].shape
        buckets, heads = state["blocks.0.pos_embedding.embedding.weight"].shape
        return {
            "t5_vocab": vocab,
            "t5_dim": width,
            "t5_ffn_dim": state["blocks.0.ffn.fc1.weight"].shape[0],
            "t5_num_heads": heads,
            "t5_num_buckets": buckets,
            "t5_num_layers": 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks.")),
        }
    except KeyError as err:
        raise CheckpointError(f"{source} lacks {err}; is it {T5_FILE} in Wan's layout?") from err


# ---------------------------------------------------------------------------------------------------------------
# Assignment into meta-built networks


def _describe(config: OmniAvatarConfig) -> str:
    return (
        f"{config.name}: dim {config.dim}, ffn {config.ffn_dim}, {config.num_layers} layers, {config.num_heads} heads"
    )


class _Filler:
    """Fills a meta-built module by assignment, checking every key and shape against the module's own."""

    def __init__(self, module: nn.Module, what: str, dtype: torch.dtype, device: torch.device | str):
        self.module, self.what, self.dtype, self.device = module, what, dtype, device
        self.expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        self.filled: set[str] = set()

    def fill(self, tensors: Mapping[str, torch.Tensor], source: str, names: Mapping[str, str] | None = None) -> None:
        """Assign `tensors` (target names); `names` maps target -> source key for error messages."""
        batch = {}
        for key, tensor in tensors.items():
            shown = (names or {}).get(key, key)
            if key not in self.expected:
                raise CheckpointError(f"{source}: unexpected key {shown!r} (as {key!r}) for the {self.what}")
            if tuple(tensor.shape) != self.expected[key]:
                raise CheckpointError(
                    f"{source}: {shown!r} has shape {list(tensor.shape)}, the {self.what} expects "
                    f"{list(self.expected[key])}"
                )
            if key in self.filled:
                raise CheckpointError(f"{source}: {shown!r} is given twice for the {self.what}")
            dtype = self.dtype if tensor.is_floating_point() else tensor.dtype
            batch[key] = tensor.to(device=self.device, dtype=dtype)
        self.module.load_state_dict(batch, strict=False, assign=True)
        self.filled.update(batch)

    def finish(self, source: str) -> None:
        missing = sorted(set(self.expected) - self.filled)
        if missing:
            shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            raise CheckpointError(f"{source}: the {self.what} misses {len(missing)} tensors: {shown}")


def _no_meta_left(module: nn.Module, what: str) -> None:
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"the {what} still has unloaded tensors: {left[:8]}")


def load_transformer(
    files: CheckpointFiles, config: OmniAvatarConfig, dtype: torch.dtype, device: torch.device | str
) -> OmniAvatarTransformer:
    """The DiT: base shards streamed one at a time, OmniAvatar tensors overlaid, LoRA merged at load."""
    source = str(files.omniavatar_weights)
    base_layout = wan_dit_shapes(config)
    where = {key: path for key, (path, _) in files.dit_index.items()}
    check_layout(files.dit_shapes, base_layout, f"Wan2.1 DiT ({_describe(config)})", where, ["patch_embedding.weight"])
    pairs, full = split_omniavatar_state_dict(files.omniavatar_state, source)
    _check_omniavatar_tensors(files, config, pairs, full)
    with torch.device("meta"):
        model = build_transformer(config)
    filler = _Filler(model, f"{config.name} DiT", dtype, device)

    def fill(chunk: dict[str, torch.Tensor], shard: Path, names: Mapping[str, str]) -> None:
        merged = merge_lora(chunk, pairs, config.lora_scale, device)
        filler.fill({names[k]: t for k, t in merged.items()}, str(shard), {names[k]: k for k in merged})

    for number, (shard, tensors) in enumerate(files.iter_dit_tensors(), start=1):
        logger.info("loading the DiT: %s (%d of %d), LoRA merged", shard.name, number, len(files.dit_shards))
        names = dit_key_map(tensors)
        chunk, size = {}, 0
        for key in tensors:
            if key in full:  # replaced by OmniAvatar (the 16-channel patch embedding)
                continue
            chunk[key] = tensors[key]
            size += chunk[key].nbytes
            if size >= LOAD_CHUNK_BYTES:  # a few tensors at a time: peak host memory ~ one copy of the weights
                fill(chunk, shard, names)
                chunk, size = {}, 0
        fill(chunk, shard, names)
    names = dit_key_map(full)
    filler.fill({names[k]: t for k, t in full.items()}, source, {names[k]: k for k in full})
    filler.finish(f"{files.base_dir} + {files.omniavatar_dir}")

    model.rope = WanRotaryPosEmbed(config.head_dim, config.patch_size, model.config.rope_max_seq_len).to(device)
    _no_meta_left(model, "DiT")
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


def _check_omniavatar_tensors(
    files: CheckpointFiles, config: OmniAvatarConfig, pairs: Mapping[str, LoraPair], full: Mapping[str, torch.Tensor]
) -> None:
    """Spec §4: every targeted Linear has a LoRA pair of rank `lora_rank`, and the full tensors are present."""
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
                f"{source}: {key} has shape {list(tensor.shape)}, expected {list(want)} ({_describe(config)}, "
                f"in_dim {config.in_dim}, audio {config.audio_dim} -> {config.audio_hidden_size})"
            )


def load_vae(files: CheckpointFiles, config: OmniAvatarConfig, dtype: torch.dtype, device) -> WanVAE:
    """Wan2.1_VAE.pth -> `WanVAE` (diffusers' AutoencoderKLWan, converted by diffusers' rename table)."""
    logger.info("loading the VAE: %s", files.vae_path.name)
    state = files.vae_state
    layout = wan_vae_shapes(config.vae_base_dim, config.vae_z_dim)
    check_layout({k: tuple(v.shape) for k, v in state.items()}, layout, "Wan VAE", files.vae_path)
    converted = convert_wan_vae_to_diffusers(state)
    with torch.device("meta"):
        model = AutoencoderKLWan(base_dim=config.vae_base_dim, z_dim=config.vae_z_dim)
    filler = _Filler(model, "Wan VAE", dtype, device)
    filler.fill(converted, str(files.vae_path))
    filler.finish(str(files.vae_path))
    _no_meta_left(model, "VAE")
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
    filler = _Filler(model, "UMT5 encoder", dtype, device)
    filler.fill(convert_umt5(state, str(files.t5_path)), str(files.t5_path))
    filler.finish(str(files.t5_path))
    model.set_input_embeddings(model.shared)  # keep the two names one tensor
    _no_meta_left(model, "UMT5 encoder")
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
    text_encoder: TextEncoder
    audio_encoder: AudioEncoder
    dtype: torch.dtype
    device: torch.device


def load_models(
    files: CheckpointFiles, dtype: torch.dtype = torch.float32, device: str = "cpu", fps: int = 25
) -> LoadedModels:
    """Resolve the dimensions and load all four networks (DiT, VAE and T5 in `dtype`; wav2vec2 in float32)."""
    config = resolve_config(files)
    logger.info("OmniAvatar %s: dim %d, %d layers, %s on %s", config.name, config.dim, config.num_layers, dtype, device)
    dev = torch.device(device)
    models = LoadedModels(
        config=config,
        dit=load_transformer(files, config, dtype, dev),
        vae=load_vae(files, config, dtype, dev),
        text_encoder=load_text_encoder(files, config, dtype, dev),
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
