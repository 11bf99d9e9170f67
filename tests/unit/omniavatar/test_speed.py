"""Speed options: attention backends against native, compile wiring, offload, and the lossless options' output."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from model.backend import CancelToken
from model.config import load_model_config
from model.omniavatar.attention import attention_backend_for
from model.omniavatar.loading import build_transformer
from model.omniavatar.speed import bucket_latent_shapes, prepare_dit, warm_up_dit
from model.omniavatar.tiny import TINY
from model.plan import plan_segments

from .helpers import max_diff
from .test_backend import tiny_request

CPU = torch.device("cpu")


def fresh_dit():
    torch.manual_seed(0)
    return build_transformer(TINY).eval()


def dit_inputs():
    g = torch.Generator().manual_seed(1)
    x, context = torch.randn(1, 33, 4, 4, 6, generator=g), torch.randn(1, 512, TINY.text_dim, generator=g)
    return x, torch.tensor([500.0]), context, torch.randn(1, 13, TINY.audio_dim, generator=g)


@torch.no_grad()
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("choice", ["math", "flex"])
def test_every_cpu_attention_backend_matches_native(choice):
    dit, inputs = fresh_dit(), dit_inputs()
    native = dit(*inputs)[0]
    setup = prepare_dit(dit, CPU, choice)
    got = dit(*inputs)[0]
    assert setup.attention == choice, f"expected backend {choice}, set {setup.attention}"
    assert max_diff(got, native) < 1e-5, f"{choice} differs from native by {max_diff(got, native)}"
    prepare_dit(dit, CPU, "native")
    assert torch.equal(dit(*inputs)[0], native), "switching back to native must restore the exact output"


@pytest.mark.parametrize("choice", ["flash", "flash3", "cudnn", "sage"])
def test_gpu_only_backends_are_refused_on_the_cpu_with_the_reason(choice):
    with pytest.raises(ValueError, match=f"options.attention: attention backend '{choice}' needs a CUDA device"):
        attention_backend_for(choice, "cpu")


def test_auto_is_native_on_the_cpu():
    assert attention_backend_for("auto", "cpu") == "native", "auto on a CPU must pick native"


@torch.no_grad()
def test_compile_wraps_every_block_and_warms_up_each_bucket_shape(tiny_config):
    shapes = bucket_latent_shapes(tiny_config.planning)
    assert shapes == ((4, 4, 6), (6, 4, 4), (4, 6, 4)), f"expected one latent shape per tiny bucket, got {shapes}"
    dit, inputs = fresh_dit(), dit_inputs()
    eager = dit(*inputs)[0]
    setup = prepare_dit(dit, CPU, compile=True, compile_backend="eager")  # dynamo tracing without codegen
    compiled = [block._compiled_call_impl is not None for block in dit.blocks]
    assert setup.compiled and all(compiled), f"every block must be compiled, got {compiled}"
    assert dit._compiled_call_impl is None, "regional compilation leaves the rest of the forward eager"
    warm_up_dit(dit, shapes, inputs[2], CPU, torch.float32, text_kv=True)
    assert torch.equal(dit(*inputs)[0], eager), "compiled blocks must give the eager output"


@torch.no_grad()
def test_offloaded_blocks_give_the_same_output():
    dit, inputs = fresh_dit(), dit_inputs()
    want = dit(*inputs)[0]
    assert prepare_dit(dit, CPU, offload=True).offload, "offload must be reported"
    assert torch.equal(dit(*inputs)[0], want), "group offloading must not change the output"


def test_lossless_options_give_identical_frames(tiny_backend, tiny_config):
    """Cached text keys/values and the untiled decode (one tile covers a tiny bucket) change no frame."""
    from model.omniavatar.backend import OmniAvatarBackend

    options = {**tiny_config.options, "text_kv_cache": True, "vae_tiling": False}
    fast_config = replace(tiny_config, options=options)
    fast = OmniAvatarBackend(fast_config)
    request = tiny_request(tiny_config, seconds=0.6)
    plan = plan_segments(request, tiny_config.planning)
    want = [s.frames for s in tiny_backend.generate(request, plan, CancelToken(), lambda *a: None)]
    got = [s.frames for s in fast.generate(request, plan, CancelToken(), lambda *a: None)]
    assert fast.describe()["speed"]["text_kv_cache"], "describe() must report the cached text keys/values"
    same = [bool(np.array_equal(a, b)) for a, b in zip(want, got, strict=True)]
    assert all(same), f"every segment must be identical with the lossless options, got {same}"


def test_speed_options_are_validated(tiny_config):
    from model.omniavatar.config import OmniAvatarOptions

    base = dict(tiny_config.options)
    for bad, message in (
        ({"attention": "fast"}, "options.attention"),
        ({"compile": "yes"}, "options.compile"),
        ({"tea_cache_model": "7b"}, "tea_cache_model"),
        ({"extra_loras": [{"file": "x"}]}, "extra_loras"),
        ({"text_kv_cache": True, "offload": True}, "cannot be combined"),
        ({"text_encoder_device": "tpu"}, "text_encoder_device"),
    ):
        with pytest.raises(ValueError, match=message):
            OmniAvatarOptions.from_dict({**base, **bad})
    assert load_model_config("configs/omniavatar-14b-fast.yaml").generation.timesteps == (1000, 750, 500, 250)


def test_an_unusable_attention_choice_stops_the_backend_before_loading(tiny_config):
    from model.omniavatar.backend import OmniAvatarBackend

    config = replace(tiny_config, options={**tiny_config.options, "attention": "flash"})
    with pytest.raises(ValueError, match="'flash' needs a CUDA device, the DiT runs on cpu"):
        OmniAvatarBackend(config)


@torch.no_grad()
def test_untiled_decode_is_one_call_over_the_whole_latent(tiny_models):
    vae = tiny_models.vae
    latents = torch.randn(1, 16, 2, 4, 60, generator=torch.Generator().manual_seed(0))  # 60 > 52: two decode tiles
    tiled = vae.decode(latents)
    vae.tiled_decode = False
    try:
        untiled = vae.decode(latents)
    finally:
        vae.tiled_decode = True
    whole = vae._decode_tile(latents).clamp(-1, 1)
    assert torch.equal(untiled, whole), "vae_tiling false must decode the latent in one piece"
    assert untiled.shape == tiled.shape == (1, 3, 5, 32, 480), f"unexpected shapes {untiled.shape}, {tiled.shape}"
    assert max_diff(untiled, tiled) > 0, "two tiles blend differently from one piece; the test needs two tiles"
