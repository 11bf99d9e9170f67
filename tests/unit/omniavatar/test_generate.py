"""The offline CLI on the tiny model folders: a multi-segment video on CPU, deterministic for a seed."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import av
import numpy as np
import torch
from safetensors.torch import save_file

from model.omniavatar.generate import main
from tests.helpers import audio_file, image_file, speech_like

from .test_backend import face_image


def cli_args(tiny_dirs, tmp_path, out, seed=5):
    image, audio = tmp_path / "face.png", tmp_path / "speech.wav"
    image.write_bytes(image_file(face_image()))
    audio.write_bytes(audio_file(speech_like(1.2), 16000))
    return [
        "--config", "configs/omniavatar-tiny.yaml",
        "--base-dir", str(tiny_dirs.base_dir),
        "--omniavatar-dir", str(tiny_dirs.omniavatar_dir),
        "--wav2vec-dir", str(tiny_dirs.wav2vec_dir),
        "--image", str(image), "--audio", str(audio),
        "--prompt", "A man talks to the camera", "--seed", str(seed), "--out", str(out),
    ]  # fmt: skip


def test_cli_writes_the_same_frames_for_a_seed(tiny_dirs, tmp_path):
    started = time.perf_counter()
    main(cli_args(tiny_dirs, tmp_path, tmp_path / "a.npz"))
    elapsed = time.perf_counter() - started
    main(cli_args(tiny_dirs, tmp_path, tmp_path / "b.npz"))
    main(cli_args(tiny_dirs, tmp_path, tmp_path / "c.npz", seed=6))
    a, b, c = (np.load(tmp_path / f"{n}.npz") for n in "abc")
    # 1.2 s + 0.3 s lead-in = 38 audio frames -> 39 frames in 3 segments of 21 (kept 21, 16, 2)
    assert a["frames"].shape == (39, 32, 32, 3), f"expected (39, 32, 32, 3) frames, found {a['frames'].shape}"
    assert a["frames"].dtype == np.uint8, f"expected uint8 frames, found {a['frames'].dtype}"
    assert a["kept_counts"].tolist() == [21, 16, 2], (
        f"expected kept counts [21, 16, 2], found {a['kept_counts'].tolist()}"
    )
    assert np.array_equal(a["frames"], b["frames"]), "the same seed must give identical frames"
    assert not np.array_equal(a["frames"], c["frames"]), "another seed must give other frames"
    assert elapsed < 60, f"a tiny multi-segment video must take under a minute on CPU, took {elapsed:.1f} s"


def test_cli_as_a_module_writes_an_mp4_with_audio(tiny_dirs, tmp_path):
    out = tmp_path / "out.mp4"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "model.omniavatar.generate", *cli_args(tiny_dirs, tmp_path, out)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, f"the CLI failed with {result.returncode}: {result.stderr[-2000:]}"
    with av.open(str(out)) as container:
        video = container.streams.video[0]
        assert (video.height, video.width) == (32, 32), f"expected 32x32 video, found {video.height}x{video.width}"
        assert len(container.streams.audio) == 1, "the MP4 must carry the speech"
        frames = sum(1 for _ in container.decode(video=0))
    assert frames == 39, f"expected 39 frames, found {frames}"


def test_cli_fast_flags_reach_the_backend_and_dit_calls_are_saved(tiny_dirs, tmp_path):
    lora = tmp_path / "distill.safetensors"
    g = torch.Generator().manual_seed(0)
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.randn(2, 48, generator=g),
               "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.randn(48, 2, generator=g)}, lora)  # fmt: skip
    fast = ["--extra-lora", f"{lora}:0.5", "--timesteps", "1000,750,500,250", "--guidance-scale", "1"]
    main([*cli_args(tiny_dirs, tmp_path, tmp_path / "fast.npz"), *fast])
    main([*cli_args(tiny_dirs, tmp_path, tmp_path / "cached.npz"), "--steps", "6", "--tea-cache-threshold", "0.3"])
    main([*cli_args(tiny_dirs, tmp_path, tmp_path / "default.npz"), "--steps", "6"])
    fast, cached, default = (np.load(tmp_path / f"{n}.npz") for n in ("fast", "cached", "default"))
    assert fast["dit_calls"].tolist() == [4, 4, 4], f"4 steps x 1 pass per segment expected, got {fast['dit_calls']}"
    assert default["dit_calls"].tolist() == [12, 12, 12], f"6 steps x 2 passes expected, got {default['dit_calls']}"
    assert all(c < 12 for c in cached["dit_calls"]), f"TeaCache must skip passes, got {cached['dit_calls']}"
    assert fast["frames"].shape == default["frames"].shape, "the fast flags must not change the video's layout"
