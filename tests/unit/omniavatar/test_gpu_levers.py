"""The lever benchmark's CPU smoke run: every lever on the tiny model, real sampler, real counts."""

from __future__ import annotations

from bench.gpu_levers import flops_per_pass, parse_args, run
from model.omniavatar.config import CONFIGS


def test_tiny_cpu_run_measures_every_lever_with_its_dit_passes():
    printed: list[str] = []
    rows = run(parse_args(["--model", "tiny", "--device", "cpu", "--buckets", "1"]), printed.append)
    by_lever = {r.lever: r for r in rows}
    want = ["baseline", "+attention", "+teacache 0.14", "fast profile", "offload"]
    assert list(by_lever) == want, f"expected the CPU levers {want}, got {list(by_lever)}"
    calls = {name: r.dit_calls for name, r in by_lever.items()}
    assert calls["baseline"] == calls["offload"] == 100, f"50 steps x 2 passes expected, got {calls}"
    assert calls["fast profile"] == 4, f"4 steps x 1 pass expected for the fast profile, got {calls}"
    assert 4 <= calls["+teacache 0.14"] < 100, f"TeaCache must skip some of the 100 passes, got {calls}"
    assert all(r.s_per_segment > r.decode_s > 0 for r in rows), f"times must be positive: {rows}"
    assert "fast profile" in printed[-1] and "speed-up" in printed[-1], f"expected the table, got {printed[-1]!r}"


def test_flop_count_of_the_14b_480p_step_is_about_3_pflop():
    """30,375 tokens (57 frames at 720x720: 15 x 45 x 45), 40 blocks, 2 passes."""
    step = 2 * flops_per_pass(CONFIGS["14b"], 15 * 45 * 45, cached_text=False)
    assert 2.9e15 < step < 3.1e15, f"expected about 3.0 PFLOP per step, got {step:.3g}"
