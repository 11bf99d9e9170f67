"""The segment loop on tiny weights: DiT inputs per segment, audio windows, noise, prefix, progress."""

from __future__ import annotations

import uuid
from dataclasses import replace

import numpy as np
import pytest
import torch

from model.backend import CancelToken
from model.errors import GenerationCancelled
from model.media.audio import with_lead_in
from model.media.image import fit_to_bucket
from model.omniavatar.backend import initial_noise
from model.plan import plan_segments
from model.request import RequestLimits, parse_request
from tests.helpers import audio_file, b64, body, image_file, speech_like

from .helpers import max_diff


def face_image(size=(40, 40)) -> np.ndarray:
    y, x = np.mgrid[: size[0], : size[1]]
    return np.stack([x * 255 // size[1], y * 255 // size[0], (x + y) * 127 // sum(size)], -1).astype(np.uint8)


def tiny_request(config, seconds=1.2, image=True, **fields):
    """A parsed request: 1.2 s of speech + 0.3 s lead-in at 32x32 -> 38 audio frames, 3 segments of 21 frames."""
    media = {"audio_base64": b64(audio_file(speech_like(seconds), 16000))} if seconds else {}
    if image:
        media["image_base64"] = b64(image_file(face_image()))
    return parse_request(body(seed=7, **media, **fields), RequestLimits(), config.generation)


def run(backend, request, plan, cancel=None):
    """Generate, recording every DiT call's inputs and every progress step."""
    calls, steps = [], []

    def record(module, args):
        calls.append([a.detach().clone() for a in args])

    hook = backend.models.dit.register_forward_pre_hook(record)
    try:
        frames = [
            s.frames for s in backend.generate(request, plan, cancel or CancelToken(), lambda *a: steps.append(a))
        ]
    finally:
        hook.remove()
    return frames, calls, steps


@pytest.fixture(scope="module")
def example(tiny_backend, tiny_config):
    request = tiny_request(tiny_config)
    plan = plan_segments(request, tiny_config.planning)
    return request, plan, *run(tiny_backend, request, plan)


def test_plan_of_the_example_has_three_segments(example):
    _, plan, frames, _, _ = example
    assert (plan.frames_per_segment, plan.overlap, plan.num_segments) == (21, 5, 3), f"unexpected plan {plan}"
    assert [len(f) for f in frames] == [s.num_frames for s in plan.segments], f"kept counts {[len(f) for f in frames]}"
    assert sum(len(f) for f in frames) == plan.num_frames, f"expected {plan.num_frames} frames in all"
    assert all(f.dtype == np.uint8 and f.shape[1:] == (32, 32, 3) for f in frames), (
        "frames must be (n, 32, 32, 3) uint8"
    )


def test_progress_and_two_guided_passes_per_step(example):
    request, plan, _, calls, steps = example
    want = [(s.index, i, request.num_steps) for s in plan.segments for i in range(1, request.num_steps + 1)]
    assert steps == want, f"expected progress {want}, found {steps}"
    assert len(calls) == 2 * len(want), (
        f"expected 2 DiT passes per step (guidance 4.5, no audio_scale), found {len(calls)}"
    )


def test_33_channel_input_and_mask_per_segment(example, tiny_backend):
    """[x_t | reference latent on every frame | mask]; mask 0 on frame 0 (segment 0), frames 0..p-1 after."""
    request, plan, _, calls, _ = example
    vae = tiny_backend.models.vae
    pixels = torch.from_numpy(fit_to_bucket(request.image, plan.height, plan.width)).permute(2, 0, 1)[None, :, None]
    reference = vae.encode(pixels * 2 - 1)  # (1, 16, 1, 4, 4)
    passes = 2 * request.num_steps
    for spec in plan.segments:
        x = calls[spec.index * passes][0]  # first DiT call of the segment: (1, 33, T, h, w)
        assert x.shape == (1, 33, plan.latent_frames, 4, 4), f"segment {spec.index}: input shape {tuple(x.shape)}"
        diff = max_diff(x[:, 16:32], reference.expand(-1, -1, plan.latent_frames, -1, -1))
        assert diff < 1e-5, f"segment {spec.index}: channels 16..31 must be the reference latent, differ by {diff}"
        fixed = 1 if spec.index == 0 else plan.prefix_latents
        want_mask = torch.tensor([0.0] * fixed + [1.0] * (plan.latent_frames - fixed))
        got_mask = x[0, 32, :, 0, 0]
        assert torch.equal(got_mask, want_mask), (
            f"segment {spec.index}: mask {got_mask.tolist()}, expected {want_mask.tolist()}"
        )
        assert bool((x[0, 32] == x[0, 32, :, :1, :1]).all()), "the mask must be constant over each frame"
    x0 = calls[0][0]
    assert max_diff(x0[:, :16, :1], reference) < 1e-5, "segment 0 must hold the reference latent in frame 0"


def test_later_segments_hold_the_reencoded_tail_of_the_previous_one(example, tiny_backend):
    request, plan, frames, calls, _ = example
    vae = tiny_backend.models.vae
    passes = 2 * request.num_steps
    # the loop re-encodes segment 0's float frames; the test has their uint8 truncation, so it takes mid-bins
    tail = (torch.from_numpy(frames[0][-plan.overlap :]).permute(3, 0, 1, 2)[None].float() + 0.5) / 255
    want = vae.encode(tail * 2 - 1)  # (1, 16, p, 4, 4)
    wrong = vae.encode(torch.from_numpy(frames[0][: plan.overlap]).permute(3, 0, 1, 2)[None].float() / 255 * 2 - 1)
    for step in range(request.num_steps):
        held = calls[passes + 2 * step][0][:, :16, : plan.prefix_latents]  # segment 1, step `step`, first pass
        diff = max_diff(held, want)
        assert diff < 0.03, (
            f"step {step}: held latents differ from the re-encoded last {plan.overlap} frames by {diff} "
            "(tolerance 0.03: uint8 rounding)"
        )
        assert max_diff(held, wrong) > 10 * diff, "held latents must come from the tail, not the head, of segment 0"


def test_audio_window_of_each_segment_is_the_upstream_slice(example, tiny_backend, tiny_config):
    """t = 0: [zero, E[0 .. L-2]]; t >= 1: E[s_t - f .. s_t + L - f - 1], s_t = (L - 1) + (t - 1)(L - f)."""
    request, plan, _, calls, _ = example
    L, f = plan.frames_per_segment, plan.overlap
    samples = with_lead_in(request.audio.samples, tiny_config.planning.lead_in_s, 16000)
    E = tiny_backend.models.audio_encoder.encode(samples, plan.padded_audio_frames)
    assert E.shape == (plan.padded_audio_frames, 128), (
        f"expected E of shape ({plan.padded_audio_frames}, 128), found {tuple(E.shape)}"
    )
    passes = 2 * request.num_steps
    for t in range(plan.num_segments):
        if t == 0:
            want = torch.cat([torch.zeros(1, E.shape[1]), E[: L - 1]])
        else:
            s_t = (L - 1) + (t - 1) * (L - f)
            want = E[s_t - f : s_t + L - f]
        got_pos, got_neg = calls[t * passes][3][0], calls[t * passes + 1][3][0]
        assert got_pos.shape == (L, 128), f"segment {t}: window shape {tuple(got_pos.shape)}"
        diff = max_diff(got_pos, want)
        assert diff == 0.0, f"segment {t}: the conditional pass's audio differs from upstream's slice by {diff}"
        assert got_neg.abs().max().item() == 0.0, f"segment {t}: the unconditional pass must get zero audio"


def test_noise_is_seeded_per_segment_on_the_cpu(example):
    request, plan, _, calls, _ = example
    passes = 2 * request.num_steps
    for spec in plan.segments:
        x = calls[spec.index * passes][0]
        shape = (1, 16, plan.latent_frames, 4, 4)
        fixed = 1 if spec.index == 0 else plan.prefix_latents
        want = initial_noise(shape, request.seed, spec.index)
        assert torch.equal(x[:, :16, fixed:], want[:, :, fixed:]), (
            f"segment {spec.index}: noise must be randn(seed + {spec.index})"
        )


def test_same_seed_same_video_and_other_seed_other_video(example, tiny_backend, tiny_config):
    request, plan, frames, _, _ = example
    again, _, _ = run(tiny_backend, request, plan)
    for i, (a, b) in enumerate(zip(frames, again, strict=True)):
        assert np.array_equal(a, b), f"segment {i}: the same seed must give identical frames"
    other = replace(request, seed=8)
    changed, _, _ = run(tiny_backend, other, plan)
    assert not np.array_equal(frames[1], changed[1]), "another seed must change the video"


def test_three_passes_with_separate_audio_scale_and_one_without_guidance(tiny_backend, tiny_config):
    for fields, passes in (({"audio_scale": 3.0}, 3), ({"guidance_scale": 1.0}, 1)):
        request = tiny_request(tiny_config, seconds=0.4, num_steps=2, **fields)
        plan = plan_segments(request, tiny_config.planning)
        _, calls, steps = run(tiny_backend, request, plan)
        assert len(calls) == passes * len(steps), (
            f"{fields}: expected {passes} DiT passes per step, found {len(calls)} for {len(steps)} steps"
        )


def test_prompts_are_encoded_once_and_cached_across_requests(tiny_backend, tiny_config):
    """Texts never seen before: each encoded once for a whole multi-segment request; the same request again
    encodes no text and takes the reference latent from the cache (the VAE encoder then only sees prefixes)."""
    base = tiny_request(tiny_config)
    image = base.image.copy()
    image[0, 0] = np.random.default_rng().integers(0, 256, 3)  # a face this backend has not seen
    request = replace(base, image=image, prompt=f"cache test {uuid.uuid4()}", negative_prompt=f"negative {uuid.uuid4()}")
    plan = plan_segments(request, tiny_config.planning)
    counts = {"text": 0, "audio": 0, "vae_encode": 0}

    def counter(name):
        return lambda *_: counts.__setitem__(name, counts[name] + 1)

    hooks = [
        tiny_backend.models.text_encoder.model.register_forward_hook(counter("text")),
        tiny_backend.models.audio_encoder.model.register_forward_hook(counter("audio")),
        tiny_backend.models.vae.model.encoder.register_forward_hook(counter("vae_encode")),
    ]
    try:
        run(tiny_backend, request, plan)
        first = dict(counts)
        counts.update(text=0, audio=0, vae_encode=0)
        run(tiny_backend, request, plan)
        second = dict(counts)
    finally:
        for hook in hooks:
            hook.remove()
    assert (first["text"], first["audio"]) == (2, 1), f"expected 2 prompt encodings and 1 audio encoding, found {first}"
    assert (second["text"], second["audio"]) == (0, 1), f"the same prompts again should come from the cache, found {second}"
    assert second["vae_encode"] == first["vae_encode"] - 1, f"the reference latent should be cached: {first} then {second}"


def test_cancel_stops_within_one_step(tiny_backend, tiny_config):
    request = tiny_request(tiny_config)
    plan = plan_segments(request, tiny_config.planning)
    cancel, steps = CancelToken(), []

    def on_step(*args):
        steps.append(args)
        if len(steps) == 2:
            cancel.cancel()

    with pytest.raises(GenerationCancelled):
        for _ in tiny_backend.generate(request, plan, cancel, on_step):
            pass
    assert steps == [(0, 1, request.num_steps), (0, 2, request.num_steps)], (
        f"expected to stop after step 2, found {steps}"
    )


def test_requests_without_image_or_audio_follow_the_plan(tiny_backend, tiny_config):
    """No upstream path: a zero reference latent with no held frame, and all-zero audio windows."""
    no_image = replace(tiny_request(tiny_config, image=False), height=32, width=32)  # the protocol's minimum is 128
    no_audio = replace(tiny_request(tiny_config, seconds=0, num_frames=30), height=32, width=32, image=None)
    for request in (no_image, no_audio):
        plan = plan_segments(request, tiny_config.planning)
        frames = [s.frames for s in tiny_backend.generate(request, plan, CancelToken(), lambda *a: None)]
        assert [len(f) for f in frames] == [s.num_frames for s in plan.segments], (
            f"kept counts {[len(f) for f in frames]}"
        )


def test_describe_and_warm_up(tiny_backend):
    described = tiny_backend.describe()
    want = {"backend": "omniavatar", "model": "OmniAvatar Wan2.1-T2V-tiny", "device": "cpu", "dtype": "fp32"}
    assert {k: described[k] for k in want} == want, f"expected {want}, found {described}"
    assert described["files"]["base"].endswith("Wan2.1-T2V-tiny"), described["files"]
    tiny_backend.warm_up()  # one small pass through every network must run


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"dtype": "int8"}, "options.dtype must be one of"),
        ({"device": "tpu"}, "options.device must be"),
        ({"colour": "blue"}, "unknown OmniAvatar options \\['colour'\\]"),
        ({"base_dir": None}, "OmniAvatar options need \\['base_dir'\\]"),
    ],
)
def test_bad_options_are_named(tiny_config, options, message):
    from model.omniavatar.config import OmniAvatarOptions

    with pytest.raises(ValueError, match=message):
        OmniAvatarOptions.from_dict({**tiny_config.options, **options})


def test_bf16_runs_the_gpu_dtype_path_on_cpu(example, tiny_config):
    """DiT, VAE and T5 in bf16 (wav2vec2 in fp32), as on a GPU: same plan, and the reference frame (a VAE
    round trip, before any sampling chaos of random weights) within bf16 rounding of the fp32 run."""
    from model.omniavatar.backend import OmniAvatarBackend

    request, plan, frames, _, _ = example
    backend = OmniAvatarBackend(replace(tiny_config, options={**tiny_config.options, "dtype": "bf16"}))
    assert backend.models.dit.dtype == torch.bfloat16, f"expected a bf16 DiT, found {backend.models.dit.dtype}"
    assert backend.models.audio_encoder.model.dtype == torch.float32, "wav2vec2 must stay float32"
    got = [s.frames for s in backend.generate(request, plan, CancelToken(), lambda *a: None)]
    assert [len(f) for f in got] == [s.num_frames for s in plan.segments], f"kept counts {[len(f) for f in got]}"
    diff = np.abs(got[0][0].astype(int) - frames[0][0].astype(int)).mean()
    assert diff < 3.0, f"bf16 reference frame differs from fp32 by {diff} grey levels on average (tolerance 3)"
