"""Flow-matching tables (upstream's 50- and 25-step values), the Euler step and the explicit distilled schedule."""

from __future__ import annotations

import pytest
import torch

from model.omniavatar.scheduler import FlowMatchScheduler

SIGMAS_50 = [
    1.000000, 0.995935, 0.991735, 0.987395, 0.982906, 0.978261, 0.973451, 0.968468, 0.963303, 0.957944,
    0.952381, 0.946602, 0.940594, 0.934343, 0.927835, 0.921053, 0.913979, 0.906593, 0.898876, 0.890805,
    0.882353, 0.873494, 0.864197, 0.854430, 0.844156, 0.833333, 0.821918, 0.809859, 0.797101, 0.783582,
    0.769231, 0.753968, 0.737705, 0.720339, 0.701754, 0.681818, 0.660377, 0.637255, 0.612245, 0.585106,
    0.555556, 0.523256, 0.487805, 0.448718, 0.405405, 0.357143, 0.303030, 0.241935, 0.172414, 0.092593,
]  # fmt: skip
BF16_T_50 = [
    1000, 996, 992, 988, 984, 980, 972, 968, 964, 956, 952, 948, 940, 936, 928, 920, 912, 908, 900, 892, 884, 872,
    864, 856, 844, 832, 820, 808, 796, 784, 768, 752, 736, 720, 700, 680, 660, 636, 612, 584, 556, 524, 488, 448,
    406, 358, 304, 242, 172, 92.5,
]  # fmt: skip
SIGMAS_25 = [
    1.000000, 0.991735, 0.982906, 0.973451, 0.963303, 0.952381, 0.940594, 0.927835, 0.913979, 0.898876, 0.882353,
    0.864197, 0.844156, 0.821918, 0.797101, 0.769231, 0.737705, 0.701754, 0.660377, 0.612245, 0.555556, 0.487805,
    0.405405, 0.303030, 0.172414,
]  # fmt: skip
BF16_T_25 = [
    1000, 992, 984, 972, 964, 952, 940, 928, 912, 900, 884, 864, 844, 820, 796, 768, 736, 700, 660, 612, 556, 488,
    406, 304, 172,
]  # fmt: skip
# N = 4 is derived by hand from the formula: u = 1, 0.75, 0.5, 0.25 -> σ = 5u / (1 + 4u)
SIGMAS_4 = [1.0, 3.75 / 4.0, 2.5 / 3.0, 1.25 / 2.0]


@pytest.mark.parametrize(
    ("steps", "sigmas", "bf16_timesteps"),
    [(50, SIGMAS_50, BF16_T_50), (25, SIGMAS_25, BF16_T_25), (4, SIGMAS_4, [1000, 936, 832, 624])],
)
def test_tables_match_upstream(steps, sigmas, bf16_timesteps):
    scheduler = FlowMatchScheduler(shift=5.0)
    scheduler.set_timesteps(steps)
    got = scheduler.sigmas.tolist()
    assert len(got) == steps, f"expected {steps} sigmas, found {len(got)}"
    worst = max(abs(a - b) for a, b in zip(got, sigmas, strict=True))
    assert worst < 5e-7, f"sigmas differ from upstream's table by up to {worst} (tolerance 5e-7): {got}"
    assert scheduler.sigmas.dtype == torch.float32, f"expected float32 sigmas, found {scheduler.sigmas.dtype}"
    as_bf16 = scheduler.timesteps.to(torch.bfloat16).float().tolist()
    assert as_bf16 == bf16_timesteps, f"expected bf16 timesteps {bf16_timesteps}, found {as_bf16}"


def test_euler_step_uses_next_sigma_and_zero_at_the_end():
    scheduler = FlowMatchScheduler()
    scheduler.set_timesteps(4)
    sample, velocity = torch.ones(2, 3), torch.full((2, 3), 2.0)
    first = scheduler.step(velocity, 0, sample)
    expected = 1 + 2 * (SIGMAS_4[1] - SIGMAS_4[0])
    assert torch.allclose(first, torch.full_like(first, expected), atol=1e-6), f"expected {expected}, found {first}"
    last = scheduler.step(velocity, 3, sample)
    expected = 1 + 2 * (0.0 - SIGMAS_4[3])
    assert torch.allclose(last, torch.full_like(last, expected), atol=1e-6), f"expected {expected}, found {last}"


def test_step_keeps_the_sample_dtype():
    scheduler = FlowMatchScheduler()
    scheduler.set_timesteps(50)
    out = scheduler.step(torch.ones(4, dtype=torch.bfloat16), 0, torch.ones(4, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16, f"expected a bf16 result like upstream's latents, found {out.dtype}"


def test_explicit_timesteps_follow_the_distilled_schedule_through_the_shift():
    """lightx2v's 4-step LoRA: raw 1000/750/500/250 -> u = t/1000 -> σ = 5u / (1 + 4u), and σ = 0 after the last."""
    scheduler = FlowMatchScheduler(shift=5.0)
    scheduler.set_explicit_timesteps([1000, 750, 500, 250])
    want = [1000.0, 937.5, 2500.0 / 3.0, 625.0]
    assert scheduler.timesteps.tolist() == pytest.approx(want, abs=1e-3), (
        f"expected DiT timesteps {want}, got {scheduler.timesteps.tolist()}"
    )
    sample, velocity = torch.ones(3), torch.full((3,), 2.0)
    last = scheduler.step(velocity, 3, sample)  # x + v·(0 − 0.625)
    assert torch.allclose(last, torch.full((3,), 1.0 - 2.0 * 0.625)), f"the last step must reach σ = 0, got {last}"


@pytest.mark.parametrize("timesteps", [[], [1000, 1000], [250, 500], [1001, 500], [0]])
def test_bad_explicit_timesteps_are_refused(timesteps):
    with pytest.raises(ValueError, match="strictly decreasing"):
        FlowMatchScheduler().set_explicit_timesteps(timesteps)
