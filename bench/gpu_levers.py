"""OmniAvatar's speed levers measured side by side on random weights: no downloads, one command.

    python -m bench.gpu_levers --model 14b --device cuda      # one H100 / H200, one 480p bucket: < 8 min
    python -m bench.gpu_levers --model tiny --device cpu      # the CI smoke test (seconds)
    python -m bench.gpu_levers --model dit-heavy --device cpu # 16 blocks of width 512: the DiT dominates

The DiT and VAE are built with random weights through the loader's own assembly (`assemble_transformer`,
`assemble_vae`: diffusers' rename tables, LoRA merge in float32, assignment into meta-built modules), then each
lever combination times one segment of the service's own sampler (`sampling.denoise_segment`) and decode:

  baseline     native attention, upstream's 50 steps x 2 guided passes
  +attention   the fastest attention kernel on the device (options.attention: auto)
  +compile     + regional torch.compile of the blocks (CUDA; on the CPU only with --compile-on-cpu)
  +teacache    + TeaCache at threshold 0.14 (the size's coefficients; the tiny models use 1.3B's)
  fast         the fast profile: 4 explicit steps (1000/750/500/250), 1 pass, cached text keys/values,
               + the attention kernel (and compile when measured)
  offload      baseline with the DiT blocks offloaded to the host, streamed to the device group by group

Columns: DiT passes per segment (forwards that ran the blocks), seconds per step (all of a step's passes),
seconds per segment (denoising + one VAE decode), VAE decode seconds, peak device memory, the share of the
GPU's dense bf16 peak (FLOPs counted from the shapes), and the speed-up of each row's segment time over the
baseline's (measured in the same run). On the CPU the tiny model is VAE-bound; `dit-heavy` shows the DiT levers.
With --steps N below a row's step count, N steps are timed and the segment is extrapolated (marked ~);
--repeat N times every row N times, round-robin, and keeps the fastest.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch

from model.config import PlanConfig, load_model_config
from model.omniavatar.config import CONFIGS, OmniAvatarConfig
from model.omniavatar.convert import LoraDelta, split_omniavatar_state_dict
from model.omniavatar.dit import OmniAvatarTransformer
from model.omniavatar.guidance import Guidance
from model.omniavatar.layouts import lora_shapes, omniavatar_full_shapes, wan_dit_shapes, wan_vae_shapes
from model.omniavatar.loading import assemble_transformer, assemble_vae
from model.omniavatar.sampling import Conditions, denoise_segment
from model.omniavatar.speed import bucket_latent_shapes, prepare_dit, warm_up_dit
from model.omniavatar.teacache import COEFFICIENTS, TeaCache
from model.omniavatar.tiny import TINY, random_tensor, random_tensors
from model.omniavatar.vae import WanVAE

TEXT_LEN = 512
DIT_HEAVY = TINY.updated(name="dit-heavy", dim=512, ffn_dim=2048, num_heads=4, num_layers=16)
MODELS: dict[str, tuple[OmniAvatarConfig, str]] = {
    "14b": (CONFIGS["14b"], "configs/omniavatar-14b.yaml"),
    "1.3b": (CONFIGS["1.3b"], "configs/omniavatar-1.3b.yaml"),
    "tiny": (TINY, "configs/omniavatar-tiny.yaml"),
    "dit-heavy": (DIT_HEAVY, "configs/omniavatar-tiny.yaml"),
}
DIT_HEAVY_PLANNING = {"buckets": [[64, 96]], "max_tokens": 200}  # 33 frames: 9 x 4 x 6 = 216 tokens per segment
DENSE_BF16_PEAK = {"H100": 989e12, "H200": 989e12, "H20": 148e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}
FAST_TIMESTEPS = (1000, 750, 500, 250)


@dataclass(frozen=True)
class Lever:
    name: str
    attention: str = "native"
    compile: bool = False
    tea_cache: float = 0.0
    fast: bool = False
    offload: bool = False


@dataclass
class Row:
    bucket: str
    lever: str
    attention: str
    dit_calls: int
    s_per_step: float
    s_per_segment: float
    decode_s: float
    peak_gib: float | None
    peak_share: float | None
    extrapolated: bool


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="tiny")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["bf16", "fp32"], help="default: bf16 on CUDA, fp32 on the CPU")
    p.add_argument("--steps", type=int, help="steps timed per row (default: all for tiny on the CPU, else 2)")
    p.add_argument("--buckets", type=int, help="how many of the config's buckets (default: all on the CPU, 1 on CUDA)")
    p.add_argument("--compile-on-cpu", action="store_true", help="also time torch.compile on the CPU (slow to build)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (tiny tensors run fastest on one)")
    p.add_argument("--repeat", type=int, default=1, help="time each row this many times (round-robin) and keep the fastest")
    return p.parse_args(argv)


# -- random models through the loader's assembly --------------------------------------------------------------


def random_dit(config: OmniAvatarConfig, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """The DiT with random weights, built block by block on `device` with a random OmniAvatar LoRA merged."""
    g = torch.Generator(device).manual_seed(seed)
    shapes = {**wan_dit_shapes(config), **omniavatar_full_shapes(config)}
    lora = {k: random_tensor(k, s, g, device) * 0.1 for k, s in lora_shapes(config, peft_default=False).items()}
    pairs, _ = split_omniavatar_state_dict(lora)
    groups: dict[str, list[str]] = {}
    for key in shapes:  # one chunk per block, one for the rest: peak memory ~ one block in float32
        groups.setdefault(key.split(".")[1] if key.startswith("blocks.") else "rest", []).append(key)

    def chunks() -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
        for name, keys in groups.items():
            yield f"random {name}", {k: random_tensor(k, shapes[k], g, device) for k in keys}

    return assemble_transformer(config, chunks(), [LoraDelta.uniform(pairs, config.lora_scale)], dtype, device, "random")


def random_vae(config: OmniAvatarConfig, dtype: torch.dtype, device: torch.device, seed: int = 1) -> WanVAE:
    state = random_tensors(wan_vae_shapes(config.vae_base_dim, config.vae_z_dim), torch.Generator().manual_seed(seed))
    return assemble_vae(state, config, dtype, device, "random")


# -- measurement ------------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def flops_per_pass(config: OmniAvatarConfig, tokens: int, cached_text: bool) -> float:
    """Matrix FLOPs of one DiT forward: self-attention (projections + scores), cross-attention, FFN, per block."""
    d, f, n, s = config.dim, config.ffn_dim, tokens, TEXT_LEN
    self_attn = 8 * n * d * d + 4 * n * n * d
    cross = 4 * n * d * d + 4 * n * s * d + (0 if cached_text else 4 * s * d * d)
    return config.num_layers * (self_attn + cross + 4 * n * d * f)


def teacache_calls(dit: OmniAvatarTransformer, conditions: Conditions, coefficients, device) -> int:
    """DiT passes that run the blocks in one segment: the skip rule depends only on the timesteps."""
    cache = TeaCache(conditions.tea_cache_threshold, coefficients, conditions.num_steps)
    computed = 0
    with torch.inference_mode():
        for t in conditions.scheduler().timesteps:
            _, modulation = dit.time_embedding(t.reshape(1).to(device=device, dtype=dit.dtype), dit.dtype)
            if cache.should_compute(modulation.unflatten(1, (6, -1))):
                computed += 1
                cache.residual = torch.zeros(())
    return computed * conditions.guidance.num_passes


def measure(dit, vae, config, lever: Lever, shape, device, dtype, steps_timed: int | None, coefficients) -> Row:
    """One row: a segment of the sampler (or `steps_timed` of its steps) and one decode, timed."""
    frames, h, w = shape
    g = torch.Generator().manual_seed(0)
    rand = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    context, negative = rand(1, TEXT_LEN, config.text_dim), rand(1, TEXT_LEN, config.text_dim)
    window, y, latents = rand(1, 4 * frames - 3, config.audio_dim), rand(1, 17, frames, h, w), rand(1, 16, frames, h, w)
    held = latents[:, :, :1].clone()
    if lever.fast:
        with torch.inference_mode():
            context = dit.text_kv(context)
        conditions = Conditions(Guidance(1.0), context, None, 0, len(FAST_TIMESTEPS), FAST_TIMESTEPS)
    else:
        conditions = Conditions(Guidance(4.5), context, negative, 0, 50, None, lever.tea_cache)
    steps, passes = conditions.num_steps, conditions.guidance.num_passes
    timed_steps = steps if steps_timed is None else min(steps_timed, steps)
    short = replace(conditions, num_steps=timed_steps, timesteps=None, tea_cache_threshold=0.0)
    denoise = lambda c: denoise_segment(dit, c, latents.clone(), y, window, held, coefficients)  # noqa: E731
    denoise(replace(short, num_steps=1))  # warm-up: kernels, allocator, compiled graphs
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if timed_steps == steps:
        seconds, (out, calls) = timed(lambda: denoise(conditions), device)
        per_pass = seconds / max(calls, 1)  # for the FLOP share: skipped passes cost next to nothing
    else:
        seconds, (out, _) = timed(lambda: denoise(short), device)
        per_pass = seconds / (timed_steps * passes)
        calls = teacache_calls(dit, conditions, coefficients, device) if lever.tea_cache else steps * passes
        seconds = per_pass * calls
    decode_s, _ = timed(lambda: vae.decode(out), device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    tokens = frames * (h // 2) * (w // 2)
    share = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    peak_flops = next((v for k, v in DENSE_BF16_PEAK.items() if k in name), None)
    if peak_flops and dtype == torch.bfloat16:
        share = flops_per_pass(config, tokens, lever.fast) / per_pass / peak_flops
    return Row(
        bucket="", lever=lever.name, attention=lever.attention, dit_calls=calls, s_per_step=seconds / steps,
        s_per_segment=seconds + decode_s, decode_s=decode_s, peak_gib=peak, peak_share=share,
        extrapolated=timed_steps < steps,
    )  # fmt: skip


def levers(device: torch.device, compile_on_cpu: bool) -> list[Lever]:
    compile = device.type == "cuda" or compile_on_cpu
    rows = [Lever("baseline"), Lever("+attention", "auto")]
    if compile:
        rows.append(Lever("+compile", "auto", compile=True))
    rows += [
        Lever("+teacache 0.14", "auto", compile=compile, tea_cache=0.14),
        Lever("fast profile", "auto", compile=compile, fast=True),
        Lever("offload", "auto", offload=True),
    ]
    return rows


def run(args: argparse.Namespace, out: Callable[[str], None] = print) -> list[Row]:
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    config, config_file = MODELS[args.model]
    planning = load_model_config(config_file).planning
    if args.model == "dit-heavy":
        planning = PlanConfig(**{**vars(planning), **DIT_HEAVY_PLANNING})
    shapes = bucket_latent_shapes(planning)[: args.buckets or (1 if device.type == "cuda" else None)]
    steps_timed = args.steps or (None if args.model == "tiny" and device.type == "cpu" else 2)
    coefficients = COEFFICIENTS[config.name if config.name in COEFFICIENTS else "1.3b"]
    started = time.perf_counter()
    dit, vae = random_dit(config, dtype, device), random_vae(config, dtype, device)
    out(f"{args.model} ({config.dim} x {config.num_layers} blocks) {dtype} on {device}: built in "
        f"{time.perf_counter() - started:.1f} s; buckets (latent T, h, w): {list(shapes)}")  # fmt: skip
    chosen = levers(device, args.compile_on_cpu)
    best: dict[tuple[str, tuple[int, int, int]], Row] = {}
    for compile, offload in dict.fromkeys((lever.compile, lever.offload) for lever in chosen):
        group = [lever for lever in chosen if (lever.compile, lever.offload) == (compile, offload)]
        if offload:
            dit.to("cpu")  # offloaded weights live on the host, as the backend loads them
            if device.type == "cuda":
                torch.cuda.empty_cache()
        prepare_dit(dit, device, group[0].attention, compile=compile, offload=offload)
        if compile:
            context = torch.zeros(1, TEXT_LEN, config.text_dim, device=device, dtype=dtype)
            seconds, _ = timed(lambda: warm_up_dit(dit, shapes, context, device, dtype), device)  # noqa: B023
            out(f"compiled the blocks and warmed them up at {len(shapes)} shapes in {seconds:.1f} s")
        for _ in range(args.repeat):  # round-robin, so that a busy moment of the machine hits every row alike
            for lever in group:
                attention = prepare_dit(dit, device, lever.attention).attention  # switches the kernel only
                for shape in shapes:
                    row = measure(dit, vae, config, replace(lever, attention=attention), shape, device, dtype,
                                  steps_timed, coefficients)  # fmt: skip
                    row.bucket = "x".join(str(v) for v in shape)
                    key = (lever.name, shape)
                    if key not in best or row.s_per_segment < best[key].s_per_segment:
                        best[key] = row
        if compile:
            for block in dit.blocks:
                block._compiled_call_impl = None  # back to eager for the next rows
    rows = [best[(lever.name, shape)] for lever in chosen for shape in shapes]
    out(table(rows))
    return rows


def table(rows: list[Row]) -> str:
    baseline = {r.bucket: r.s_per_segment for r in rows if r.lever == "baseline"}
    head = ("bucket T x h x w", "lever", "attention", "DiT passes", "s/step", "s/segment", "VAE decode s",
            "peak GiB", "bf16 peak", "speed-up")  # fmt: skip
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        mark = "~" if r.extrapolated else ""
        lines.append(" | ".join((
            r.bucket, r.lever, r.attention, str(r.dit_calls), f"{r.s_per_step:.4f}", f"{mark}{r.s_per_segment:.3f}",
            f"{r.decode_s:.3f}", "-" if r.peak_gib is None else f"{r.peak_gib:.1f}",
            "-" if r.peak_share is None else f"{100 * r.peak_share:.0f}%",
            f"{baseline[r.bucket] / r.s_per_segment:.1f}x",
        )))  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    run(parse_args(argv if argv is not None else []))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
