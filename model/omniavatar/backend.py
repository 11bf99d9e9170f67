"""OmniAvatarBackend: upstream OmniAvatar's segment loop over the official weights, streamed segment by segment.

Per request: the prompts are encoded once, the (lead-in + speech) audio is embedded once, the reference
image is VAE-encoded once. Per segment: take the audio window, start from seeded noise, hold the fixed
latent frames (the reference image for segment 0, the re-encoded tail of the previous segment after),
run the guided flow-matching sampler, decode, and yield the kept frames at once. Only the last `overlap`
frames of a segment are re-encoded for the next one; nothing else is decoded (upstream's extra "recons"
decode of every segment is skipped: its result is unused).

Noise is device independent: segment k starts from `torch.randn` of a CPU generator seeded `seed + k`, in
float32, then moved and cast, so one seed gives the same video on CPU and GPU up to numerics and any
segment can be regenerated on its own given its prefix.

Requests without an image or without audio have no upstream path; here the reference latent is
zero with no frame held in segment 0, and missing audio is the all-zero window guidance already uses.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Generic, TypeVar

import numpy as np
import torch

from model.backend import AvatarBackend, CancelToken, SegmentFrames, StepCallback
from model.config import ModelConfig, resolve_path
from model.errors import RequestError
from model.media.audio import with_lead_in
from model.media.image import fit_to_bucket
from model.omniavatar.attention import attention_backend_for
from model.omniavatar.config import OmniAvatarOptions
from model.omniavatar.dit import TextKV
from model.omniavatar.guidance import Guidance
from model.omniavatar.loading import CheckpointFiles, LoadedModels, load_models
from model.omniavatar.parallel import CollectiveCancel, ParallelGroups, ParallelLayout
from model.omniavatar.sampling import Conditions, denoise_segment
from model.omniavatar.scheduler import FlowMatchScheduler
from model.omniavatar.speed import bucket_latent_shapes, prepare_dit, warm_up_dit
from model.omniavatar.teacache import COEFFICIENTS, tea_cache_size
from model.omniavatar.ulysses import SequenceParallel
from model.plan import SegmentPlan, SegmentSpec
from model.request import GenerateRequest

__all__ = ["OmniAvatarBackend", "audio_window", "conditioning", "initial_noise", "to_uint8"]


def conditioning(reference: torch.Tensor, latent_frames: int, fixed: int) -> torch.Tensor:
    """The DiT's 17 conditioning channels: the reference latent on every frame, then the mask.

    Args:
        reference: (1, 16, 1, h, w) reference-image latent (zeros without an image).
        latent_frames: T, latent frames per segment.
        fixed: latent frames held clean (mask 0); the rest are generated (mask 1).

    Returns:
        (1, 17, T, h, w) in the reference's dtype.
    """
    mask = torch.ones_like(reference[:, :1]).repeat(1, 1, latent_frames, 1, 1)  # (1, 1, T, h, w)
    mask[:, :, :fixed] = 0
    return torch.cat([reference.repeat(1, 1, latent_frames, 1, 1), mask], dim=1)


def audio_window(embedding: torch.Tensor, spec: SegmentSpec) -> torch.Tensor:
    """Rows [start, end) of the audio embedding E (S, C), where row -1 is the all-zero row -> (1, L, C)."""
    start, end = spec.audio_window
    padded = torch.cat([torch.zeros_like(embedding[:1]), embedding])  # row r of E is row r + 1 here
    window = padded[start + 1 : end + 1]
    if window.shape[0] != end - start:
        raise ValueError(f"segment {spec.index}: audio rows {start}..{end} exceed the embedding's {embedding.shape[0]}")
    return window[None]


def initial_noise(shape: tuple[int, ...], seed: int, segment: int) -> torch.Tensor:
    """Segment `segment`'s starting noise: float32 from a CPU generator seeded `seed + segment`."""
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed + segment), dtype=torch.float32)


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(1, 3, n, H, W) float in [0, 1] -> (n, H, W, 3) uint8 by truncation, as upstream writes frames."""
    return (frames[0] * 255).to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()


V = TypeVar("V")


class LruCache(Generic[V]):
    """A small thread-safe least-recently-used cache (requests may run in several threads)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_compute(self, key: Hashable, compute: Callable[[], V]) -> V:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = compute()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._items)


class OmniAvatarBackend(AvatarBackend):
    """OmniAvatar (Wan2.1-T2V + LoRA + audio) from the official files named in the config's `options`."""

    name = "omniavatar"

    def __init__(self, config: ModelConfig, text_encoder: Callable[[str], torch.Tensor] | None = None) -> None:
        """`text_encoder` (text -> (1, text_len, text_dim)) is the shared encoder that `options.shared_text_encoder`
        asks for; without that option UMT5 is loaded here."""
        super().__init__(config)
        self.options = OmniAvatarOptions.from_dict(config.options, resolve_path)
        if self.options.shared_text_encoder and text_encoder is None:
            raise ValueError(f"{config.source}: options.shared_text_encoder needs the TextEncoder deployment's encoder")
        self._shared_text_encoder = text_encoder if self.options.shared_text_encoder else None
        if self.options.device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"{config.source}: options.device is {self.options.device!r} but CUDA is not available")
        attention_backend_for(self.options.attention, self.options.device)  # an unusable kernel fails before loading
        files = CheckpointFiles.find(self.options.base_dir, self.options.omniavatar_dir, self.options.wav2vec_dir)
        self.models: LoadedModels = load_models(
            files,
            self.options.torch_dtype,
            self.options.device,
            fps=config.planning.fps,
            extra_loras=self.options.extra_loras,
            text_encoder_device=self.options.text_encoder_device,
            dit_device="cpu" if self.options.offload else None,
            text_encoder=self._shared_text_encoder is None,
        )
        self.models.vae.tiled_decode = self.options.vae_tiling
        self.tea_cache_model = tea_cache_size(self.options.tea_cache_model, self.models.config.name)
        self.parallel = self._join_ranks(self.options.parallel)  # before prepare_dit: it sets every kernel
        self.dit_setup = prepare_dit(
            self.models.dit, self.models.device, self.options.attention, self.options.compile, self.options.offload
        )
        if config.generation.timesteps is not None:
            FlowMatchScheduler().set_explicit_timesteps(config.generation.timesteps)  # a bad list fails at load
        self._prompts: LruCache[torch.Tensor] = LruCache(self.options.prompt_cache_size)  # text -> (1, L, C)
        self._references: LruCache[torch.Tensor] = LruCache(self.options.reference_cache_size)  # image -> latent
        audio_rate = self.models.audio_encoder.sample_rate
        if audio_rate != config.planning.sample_rate or audio_rate % config.planning.fps:
            raise ValueError(
                f"{config.source}: planning.sample_rate {config.planning.sample_rate} and fps {config.planning.fps} "
                f"must match wav2vec2's {audio_rate} Hz with a whole number of samples per frame"
            )

    def _join_ranks(self, layout: ParallelLayout) -> ParallelGroups | None:
        """With more than one rank: meet the others and run the DiT's blocks sequence parallel (ulysses > 1)."""
        if layout.world_size == 1:
            return None
        layout.check_heads(self.models.config.num_heads)
        groups = ParallelGroups.from_env(layout, self.models.device)
        if layout.ulysses > 1:
            SequenceParallel(groups.ulysses_group, layout.ulysses, groups.ulysses_rank).install(self.models.dit)
        return groups

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model": f"OmniAvatar {self.models.config.name}",
            "device": str(self.models.device),
            "dtype": self.options.dtype,
            "text_encoder": "shared" if self._shared_text_encoder is not None else str(self.models.text_encoder.model.device),
            "files": {"base": str(self.options.base_dir), "omniavatar": str(self.options.omniavatar_dir), "wav2vec": str(self.options.wav2vec_dir)},
            "cached_prompts": len(self._prompts),
            "cached_references": len(self._references),
            "speed": {
                "attention": self.dit_setup.attention,
                "compile": self.dit_setup.compiled,
                "offload": self.dit_setup.offload,
                "text_kv_cache": self.options.text_kv_cache,
                "vae_tiling": self.options.vae_tiling,
                "tea_cache_model": self.tea_cache_model,
                "timesteps": self.config.generation.timesteps,
            },
            "parallel": self.options.parallel.describe() if self.parallel is None else self.parallel.describe(),
        }

    @torch.inference_mode()
    def warm_up(self) -> None:
        """One small pass through every network (kernel selection, allocator) before the first request; with
        `compile`, one DiT forward at every bucket's segment shape, so no request pays a compilation."""
        m = self.models
        context = self._encode_text("warm up")
        m.audio_encoder.encode(np.zeros(m.audio_encoder.samples_per_frame, np.float32), num_frames=1)
        latents = torch.zeros(1, 16, 2, 4, 4, device=m.device, dtype=m.dtype)
        if self.options.compile:  # the real shapes only (a frame size outside the buckets compiles on first use)
            shapes = bucket_latent_shapes(self.config.planning)
            warm_up_dit(m.dit, shapes, context, m.device, m.dtype, self.options.text_kv_cache)
        else:
            y = conditioning(torch.zeros_like(latents[:, :, :1]), 2, 1)
            audio = torch.zeros(1, 5, m.config.audio_dim, device=m.device, dtype=m.dtype)
            m.dit(torch.cat([latents, y], 1), torch.tensor([1000.0], device=m.device), context, audio)
        m.vae.encode(m.vae.decode(latents))

    def generate(
        self, request: GenerateRequest, plan: SegmentPlan, cancel: CancelToken, on_step: StepCallback
    ) -> Iterator[SegmentFrames]:
        """Generate a request's video segment by segment (see `AvatarBackend.generate`).

        Yields:
            SegmentFrames with plan.segments[i].num_frames uint8 frames each, as soon as segment i is decoded.

        Raises:
            GenerationCancelled: `cancel` was set; checked before every denoising step and every VAE call.
            RequestError: TeaCache asked for on a model without TeaCache coefficients.
        """
        if request.tea_cache_threshold > 0 and self.tea_cache_model is None:
            raise RequestError(
                "invalid_field",
                f"TeaCache has no coefficients for {self.models.config.name}; set options.tea_cache_model to one of "
                f"{sorted(COEFFICIENTS)} in the model config, or send tea_cache_threshold 0",
                "tea_cache_threshold",
            )
        if self.parallel is not None:  # every rank runs this loop; each checkpoint is agreed by all of them
            yield from self._lockstep(request, plan, CollectiveCancel(cancel, self.parallel), on_step)
            return
        yield from self._segments(request, plan, cancel, on_step)

    def _lockstep(
        self, request: GenerateRequest, plan: SegmentPlan, cancel: CollectiveCancel, on_step: StepCallback
    ) -> Iterator[SegmentFrames]:
        """The segment loop on one of several ranks; a reader that stops early tells the other ranks."""
        try:
            yield from self._segments(request, plan, cancel, on_step)
        except GeneratorExit:  # closed at a yield: the other ranks are at their next agreement
            cancel.abandon()
            raise
        cancel.finish()

    def _segments(
        self, request: GenerateRequest, plan: SegmentPlan, cancel: CancelToken, on_step: StepCallback
    ) -> Iterator[SegmentFrames]:
        # 1. Encode prompt: once per request, the negative prompt only when guidance needs it
        conditions = self.encode_prompts(request)
        # 2. Encode audio: the whole (lead-in + speech) clip once; each segment takes its window below
        embedding = self.encode_audio(request, plan)
        reference, has_image = self.encode_reference(request, plan)
        prefix, prefix_frames = reference, int(has_image)  # latents held clean: the reference image for segment 0
        for spec in plan.segments:
            cancel.checkpoint()
            window = self._window(embedding, spec, plan)
            y = conditioning(reference, plan.latent_frames, prefix_frames)
            # 3. Prepare latents, 4. Denoise
            latents, dit_calls = self.denoise(
                spec, plan, conditions, window, y, prefix[:, :, :prefix_frames], cancel, on_step
            )
            # 5. Decode: all L frames, keep [keep_from, keep_from + num_frames)
            cancel.checkpoint()
            frames = self.decode(latents)  # (1, 3, L, H, W) float32 in [0, 1]
            kept = frames[:, :, spec.keep_from : spec.keep_from + spec.num_frames]
            yield SegmentFrames(index=spec.index, frames=to_uint8(kept), dit_calls=dit_calls)
            if spec.index + 1 < plan.num_segments:
                cancel.checkpoint()
                prefix, prefix_frames = self.encode_prefix(frames, plan), plan.prefix_latents

    def encode_prompts(self, request: GenerateRequest) -> Conditions:
        """The prompt (and, when guidance needs it, the negative prompt) encoded, or taken from the cache;
        with `text_kv_cache`, turned into every block's cross-attention keys and values once per request."""
        guidance = Guidance(request.guidance_scale, request.audio_scale)
        context = self.encode_text(request.prompt)  # (1, text_len, text_dim)
        negative = self.encode_text(request.negative_prompt) if guidance.needs_negative_prompt else None
        if self.options.text_kv_cache:
            context, negative = self._text_kv(context), (None if negative is None else self._text_kv(negative))
        timesteps = self.config.generation.timesteps
        steps = len(timesteps) if timesteps is not None else request.num_steps
        return Conditions(guidance, context, negative, request.seed, steps, timesteps, request.tea_cache_threshold)

    def encode_text(self, text: str) -> torch.Tensor:
        return self._prompts.get_or_compute(text, lambda: self._encode_text(text))

    @torch.inference_mode()
    def _encode_text(self, text: str) -> torch.Tensor:
        if self._shared_text_encoder is not None:
            return self._shared_text_encoder(text).to(self.models.device)
        return self.models.text_encoder.encode([text]).to(self.models.device)

    @torch.inference_mode()
    def _text_kv(self, context: torch.Tensor) -> TextKV:
        return self.models.dit.text_kv(context)

    @torch.inference_mode()
    def encode_audio(self, request: GenerateRequest, plan: SegmentPlan) -> torch.Tensor | None:
        """E: (S, C) float32, one row per padded audio frame; None without audio (every window is zero)."""
        if request.audio is None:
            return None
        samples = with_lead_in(request.audio.samples, plan.lead_in_s, self.config.planning.sample_rate)
        return self.models.audio_encoder.encode(samples, plan.padded_audio_frames)

    def encode_reference(self, request: GenerateRequest, plan: SegmentPlan) -> tuple[torch.Tensor, bool]:
        """The reference image fitted to the bucket and VAE-encoded: (1, 16, 1, h, w); zeros without an image.

        Cached by the image's content and the bucket, so a face used again skips the VAE."""
        m = self.models
        h, w = plan.height // m.vae.spatial_factor, plan.width // m.vae.spatial_factor
        if request.image is None:
            return torch.zeros(1, m.config.vae_z_dim, 1, h, w, device=m.device, dtype=m.dtype), False
        key = (hashlib.sha256(request.image.tobytes()).hexdigest(), request.image.shape, plan.height, plan.width)
        return self._references.get_or_compute(key, lambda: self._encode_reference(request.image, plan)), True

    @torch.inference_mode()
    def _encode_reference(self, image: np.ndarray, plan: SegmentPlan) -> torch.Tensor:
        m = self.models
        pixels = torch.from_numpy(fit_to_bucket(image, plan.height, plan.width))  # (H, W, 3) in [0, 1]
        pixels = pixels.permute(2, 0, 1)[None, :, None].to(m.device) * 2 - 1  # (1, 3, 1, H, W) in [-1, 1]
        return m.vae.encode(pixels.to(m.dtype))

    def _window(self, embedding: torch.Tensor | None, spec: SegmentSpec, plan: SegmentPlan) -> torch.Tensor:
        """This segment's (1, L, C) audio rows in the model dtype (upstream casts the slice to bf16)."""
        m = self.models
        if embedding is None:
            return torch.zeros(1, plan.frames_per_segment, m.config.audio_dim, device=m.device, dtype=m.dtype)
        return audio_window(embedding, spec).to(m.dtype)

    @torch.inference_mode()
    def denoise(
        self,
        spec: SegmentSpec,
        plan: SegmentPlan,
        conditions: Conditions,
        window: torch.Tensor,
        y: torch.Tensor,
        held: torch.Tensor,
        cancel: CancelToken,
        on_step: StepCallback,
    ) -> tuple[torch.Tensor, int]:
        """Steps 3-4 of one segment: seeded noise, then the guided sampler (`sampling.denoise_segment`).

        Returns:
            The latents and the number of DiT forwards that ran the blocks.
        """
        m = self.models
        # 3. Prepare latents: (1, 16, T, h, w), device-independent noise
        shape = (1, m.config.vae_z_dim, plan.latent_frames, *y.shape[-2:])
        latents = initial_noise(shape, conditions.seed, spec.index).to(device=m.device, dtype=m.dtype)
        # 4. Denoise
        coefficients = COEFFICIENTS[self.tea_cache_model] if self.tea_cache_model else None
        return denoise_segment(
            m.dit, conditions, latents, y, window, held, coefficients,
            lambda: cancel.checkpoint(), lambda i, n: on_step(spec.index, i, n), self.parallel,
        )  # fmt: skip

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(1, 16, T, h, w) -> (1, 3, L, H, W) float32 in [0, 1], as upstream maps decoded frames."""
        return (self.models.vae.decode(latents).float() + 1) / 2

    @torch.inference_mode()
    def encode_prefix(self, frames: torch.Tensor, plan: SegmentPlan) -> torch.Tensor:
        """The last `overlap` decoded frames re-encoded: (1, 16, p, h, w), the next segment's held latents."""
        m = self.models
        tail = frames[:, :, -plan.overlap :].clamp(0, 1) * 2 - 1  # (1, 3, f, H, W) in [-1, 1]
        latents = m.vae.encode(tail.to(m.dtype))
        if latents.shape[2] != plan.prefix_latents:
            raise RuntimeError(
                f"{plan.overlap} frames encoded to {latents.shape[2]} latents, expected {plan.prefix_latents}"
            )
        return latents
