"""Per-component time of one OmniAvatar segment, and each component's share of it: the baseline for speed work.

    python -m bench.omniavatar_components                      # tiny random model on CPU (written to a temp dir)
    python -m bench.omniavatar_components --config configs/omniavatar-14b.yaml --steps 50   # real weights, GPU

Components: text encoding (prompt + negative prompt, once per request), audio encoding (once per request),
one guided DiT step (all its passes), VAE decode of a segment, VAE re-encode of the next segment's prefix,
and MP4 encoding of the kept frames. A segment costs steps x DiT step + decode + re-encode + MP4; the
per-request costs are spread over the request's segments. Times are medians of --repeat runs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from model.backend import CancelToken
from model.config import load_model_config
from model.media.audio import DecodedAudio
from model.media.mp4 import EncodingOptions, SegmentEncoder
from model.omniavatar.backend import OmniAvatarBackend, audio_window, conditioning, to_uint8
from model.omniavatar.guidance import guided_velocity
from model.plan import plan_segments
from model.request import GenerateRequest

TINY_CONFIG = "configs/omniavatar-tiny.yaml"


def synthetic_request(config, seconds: float, steps: int | None, seed: int = 0) -> GenerateRequest:
    """A speech-like tone and a gradient image as large as the first bucket: no files needed."""
    rate = config.planning.sample_rate
    t = np.arange(int(seconds * rate)) / rate
    speech = (0.3 * np.sin(2 * np.pi * 220 * t) * np.clip(np.sin(2 * np.pi * 3 * t), 0, None)).astype(np.float32)
    height, width = config.planning.buckets[0]
    y, x = np.mgrid[:height, :width]
    image = np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // (height + width)], -1).astype(np.uint8)
    g = config.generation
    return GenerateRequest(
        prompt="A realistic video of a man speaking directly to the camera on a sofa.",
        negative_prompt=g.negative_prompt,
        image=image,
        audio=DecodedAudio(speech, speech[None], rate),
        height=height,
        width=width,
        num_frames=None,
        num_steps=steps or g.num_steps,
        guidance_scale=g.guidance_scale,
        audio_scale=g.audio_scale,
        overlap_frame=g.overlap_frame,
        seed=seed,
    )


def timed(fn: Callable[[], object], repeat: int, sync: Callable[[], None]) -> float:
    """Median seconds of `repeat` calls after one warm-up call."""
    fn()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", default=TINY_CONFIG, help=f"model YAML (default {TINY_CONFIG}, written to a temp dir)"
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="speech length of the synthetic request")
    parser.add_argument("--steps", type=int, help="denoising steps per segment (default: the config's)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (on a shared CPU, 1 is fastest for tiny tensors)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        overrides = {}
        if args.config == TINY_CONFIG:
            from model.omniavatar.tiny import write_tiny

            dirs = write_tiny(Path(tmp))
            overrides = {"options": {"base_dir": str(dirs.base_dir), "omniavatar_dir": str(dirs.omniavatar_dir),
                                     "wav2vec_dir": str(dirs.wav2vec_dir)}}  # fmt: skip
        config = load_model_config(args.config, overrides)
        backend = OmniAvatarBackend(config)
        run(backend, config, args)


def run(backend: OmniAvatarBackend, config, args: argparse.Namespace) -> None:
    m = backend.models
    cuda = m.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    request = synthetic_request(config, args.seconds, args.steps)
    plan = plan_segments(request, config.planning)
    spec = plan.segments[1] if plan.num_segments > 1 else plan.segments[0]
    backend.warm_up()

    # inputs of one later segment, computed once
    conditions = backend.encode_prompts(request)
    embedding = backend.encode_audio(request, plan)
    reference, _ = backend.encode_reference(request, plan)
    window = audio_window(embedding, spec).to(m.dtype)
    y = conditioning(reference, plan.latent_frames, plan.prefix_latents)
    latents = torch.randn(1, m.config.vae_z_dim, plan.latent_frames, *y.shape[-2:], device=m.device).to(m.dtype)
    x = torch.cat([latents, y], dim=1)
    timestep = torch.tensor([500.0], device=m.device)
    frames = backend.decode(latents)
    kept = to_uint8(frames[:, :, spec.keep_from : spec.keep_from + spec.num_frames])

    @torch.inference_mode()
    def dit_step() -> torch.Tensor:
        def velocity(context, audio):
            return m.dit(x, timestep, context, audio)[0]

        return guided_velocity(velocity, conditions.guidance, conditions.context, conditions.negative, window)

    def mp4() -> bytes:  # a fresh encoder each time: the AAC stream advances with every segment encoded
        return SegmentEncoder(plan, request.audio, EncodingOptions()).encode(spec, kept)

    def text() -> torch.Tensor:  # the encoder itself: the backend's prompt cache would hide it
        return backend.models.text_encoder.encode([request.prompt, request.negative_prompt])

    steps, segments = request.num_steps, plan.num_segments
    rows = [  # (component, seconds per call, calls per segment)
        ("text encoding (2 prompts)", timed(text, args.repeat, sync), 1 / segments),
        ("audio encoding", timed(lambda: backend.encode_audio(request, plan), args.repeat, sync), 1 / segments),
        (f"DiT step ({conditions.guidance.num_passes} passes)", timed(dit_step, args.repeat, sync), steps),
        ("VAE decode", timed(lambda: backend.decode(latents), args.repeat, sync), 1),
        ("VAE re-encode of the prefix", timed(lambda: backend.encode_prefix(frames, plan), args.repeat, sync), 1),
        ("MP4 encoding", timed(mp4, args.repeat, sync), 1),
    ]
    total = sum(t * n for _, t, n in rows)

    print(
        f"OmniAvatar {m.config.name} on {m.device} ({backend.options.dtype}, {torch.get_num_threads()} CPU threads): "
        f"{plan.height}x{plan.width}, {plan.frames_per_segment} frames ({plan.latent_frames} latent) per segment, "
        f"{segments} segments for {args.seconds:g} s of speech, {steps} steps, median of {args.repeat}"
    )
    print(f"{'component':<30}{'ms/call':>12}{'calls/segment':>15}{'ms/segment':>13}{'share':>8}")
    for name, seconds, calls in rows:
        print(
            f"{name:<30}{seconds * 1e3:>12.2f}{calls:>15.2f}{seconds * calls * 1e3:>13.2f}{seconds * calls / total:>8.1%}"
        )
    print(f"{'segment (sum)':<30}{'':>12}{'':>15}{total * 1e3:>13.2f}{1:>8.0%}")

    start = time.perf_counter()
    for _ in backend.generate(request, plan, CancelToken(), lambda *a: None):
        pass
    sync()
    measured = (time.perf_counter() - start) / segments
    print(f"end-to-end generate, per segment (MP4 excluded): {measured * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
