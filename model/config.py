"""Model configuration: the YAML files in configs/ turned into typed, frozen objects."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class GenerationDefaults:
    """Request fields a client may leave out, as the model config sets them."""

    num_steps: int = 50
    guidance_scale: float = 4.5
    audio_scale: float | None = None
    overlap_frame: int = 13
    num_frames: int = 81  # only for requests without audio
    negative_prompt: str = ""
    tea_cache_threshold: float = 0.0  # TeaCache's accumulated-distance threshold; 0 turns it off
    timesteps: tuple[int, ...] | None = None  # explicit denoising timesteps (a distilled schedule); replaces num_steps

    def __post_init__(self) -> None:
        if self.timesteps is not None:
            object.__setattr__(self, "timesteps", tuple(int(t) for t in self.timesteps))


@dataclass(frozen=True)
class PlanConfig:
    """What the segment planner needs to know about the model: frame rate, token budget, buckets."""

    fps: int = 25
    sample_rate: int = 16000
    max_tokens: int = 30000
    lead_in_s: float = 0.3
    buckets: tuple[tuple[int, int], ...] = ((400, 720), (720, 720), (720, 400))  # (height, width)

    def __post_init__(self) -> None:
        object.__setattr__(self, "buckets", tuple(tuple(int(v) for v in b) for b in self.buckets))


@dataclass(frozen=True)
class ModelConfig:
    """One backend's configuration: its registry name, request defaults, planner limits and own options."""

    backend: str
    generation: GenerationDefaults = field(default_factory=GenerationDefaults)
    planning: PlanConfig = field(default_factory=PlanConfig)
    options: dict[str, Any] = field(default_factory=dict)
    source: str = "<inline>"

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<inline>") -> ModelConfig:
        unknown = set(data) - {"backend", "generation", "planning", "options"}
        if unknown:
            raise ValueError(f"{source}: unknown top-level keys {sorted(unknown)}")
        if "backend" not in data:
            raise ValueError(f"{source}: 'backend' is required (e.g. backend: preview)")
        return cls(
            backend=str(data["backend"]),
            generation=_build(GenerationDefaults, data.get("generation") or {}, f"{source}: generation"),
            planning=_build(PlanConfig, data.get("planning") or {}, f"{source}: planning"),
            options=dict(data.get("options") or {}),
            source=source,
        )


def resolve_path(path: str | Path) -> Path:
    """A path as given if it exists, else relative to the project root (Ray workers may run elsewhere)."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or candidate.exists():
        return candidate
    return PROJECT_ROOT / candidate


def load_model_config(path: str | Path, overrides: dict[str, Any] | None = None) -> ModelConfig:
    """Read a model config YAML; `overrides` is deep-merged into it (e.g. {"options": {"device": "cpu"}})."""
    resolved = resolve_path(path)
    if not resolved.is_file():
        raise FileNotFoundError(f"model config not found: {path} (looked at {resolved})")
    data = yaml.safe_load(resolved.read_text()) or {}
    return ModelConfig.from_dict(deep_merge(data, overrides or {}), source=str(path))


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """A copy of `base` with `extra` merged in; nested dicts merge, everything else replaces."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _build(cls: type, values: dict[str, Any], where: str):
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    return cls(**values)
