"""Guidance passes and formulas (upstream's 1 / 2 / 3-pass rule)."""

from __future__ import annotations

import pytest
import torch

from model.omniavatar.guidance import Guidance, guided_velocity

POS_CTX, NEG_CTX = torch.tensor([1.0]), torch.tensor([-1.0])
AUDIO = torch.tensor([3.0])


def velocity_table(calls):
    """A velocity function with a distinct, known value per (context, audio) combination; records its calls."""
    values = {(1.0, 3.0): 10.0, (1.0, 0.0): 4.0, (-1.0, 0.0): 1.0, (-1.0, 3.0): 100.0}

    def velocity(context, audio):
        key = (context.item(), audio.item())
        calls.append(key)
        return torch.tensor([values[key]])

    return velocity


@pytest.mark.parametrize(
    ("guidance_scale", "audio_scale", "passes"),
    [(1.0, None, 1), (1.0, 3.0, 1), (4.5, None, 2), (4.5, 4.5, 2), (4.5, 3.0, 3)],
)
def test_number_of_passes(guidance_scale, audio_scale, passes):
    guidance = Guidance(guidance_scale, audio_scale)
    calls = []
    guided_velocity(velocity_table(calls), guidance, POS_CTX, NEG_CTX, AUDIO)
    assert guidance.num_passes == passes, f"expected {passes} passes, num_passes says {guidance.num_passes}"
    assert len(calls) == passes, f"expected {passes} DiT calls, found {len(calls)}: {calls}"


def test_one_pass_is_the_conditional_velocity():
    out = guided_velocity(velocity_table([]), Guidance(1.0, 3.0), POS_CTX, None, AUDIO)
    assert out.item() == 10.0, f"expected v(prompt, audio) = 10, found {out.item()}"


def test_two_passes_use_negative_prompt_and_zero_audio():
    calls = []
    out = guided_velocity(velocity_table(calls), Guidance(4.5), POS_CTX, NEG_CTX, AUDIO)
    expected = 1.0 + 4.5 * (10.0 - 1.0)
    assert calls == [(1.0, 3.0), (-1.0, 0.0)], f"expected calls (prompt, audio), (negative, zero), found {calls}"
    assert out.item() == pytest.approx(expected, abs=1e-6), f"expected {expected}, found {out.item()}"


def test_three_passes_formula():
    calls = []
    out = guided_velocity(velocity_table(calls), Guidance(4.5, 3.0), POS_CTX, NEG_CTX, AUDIO)
    expected = 1.0 + 4.5 * (4.0 - 1.0) + 3.0 * (10.0 - 4.0)
    assert sorted(calls) == sorted([(1.0, 3.0), (1.0, 0.0), (-1.0, 0.0)]), f"unexpected DiT calls {calls}"
    assert out.item() == pytest.approx(expected, abs=1e-6), f"expected {expected}, found {out.item()}"


def test_three_passes_reduce_to_two_when_scales_are_equal():
    v = velocity_table([])
    two = guided_velocity(v, Guidance(4.5, None), POS_CTX, NEG_CTX, AUDIO)
    # the 3-pass formula with a = g, evaluated by hand, equals the 2-pass result
    three_by_hand = 1.0 + 4.5 * (4.0 - 1.0) + 4.5 * (10.0 - 4.0)
    assert two.item() == pytest.approx(three_by_hand, abs=1e-6), f"expected {three_by_hand}, found {two.item()}"


def test_guidance_without_negative_context_is_an_error():
    with pytest.raises(ValueError, match="negative"):
        guided_velocity(velocity_table([]), Guidance(4.5), POS_CTX, None, AUDIO)
