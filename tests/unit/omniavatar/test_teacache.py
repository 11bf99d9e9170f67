"""TeaCache: the skip rule, the coefficient sets, the residual reuse in the DiT and the backend's DiT call count."""

from __future__ import annotations

import pytest
import torch

from model.backend import CancelToken
from model.errors import RequestError
from model.omniavatar.teacache import COEFFICIENTS, TeaCache, tea_cache_size
from model.plan import plan_segments
from model.request import RequestLimits, parse_request
from tests.helpers import body

from .helpers import max_diff
from .test_backend import tiny_request

IDENTITY = (0.0, 0.0, 0.0, 1.0, 0.0)  # poly(x) = x: the accumulator sums the raw relative distances


def test_skip_rule_accumulates_distances_and_always_computes_first_and_last_step():
    cache = TeaCache(threshold=0.25, coefficients=IDENTITY, num_steps=7)
    modulation = torch.ones(6, 4)
    pattern = []
    for _ in range(7):
        compute = cache.should_compute(modulation)
        pattern.append(compute)
        if compute:
            cache.store(torch.zeros(2), torch.ones(2))
        modulation = modulation * 1.1  # relative L1 distance 0.1 from the previous step
    # acc: -, .1, .2, .3 (>= .25: compute, reset), .1, .2, last step
    want = [True, False, False, True, False, False, True]
    assert pattern == want, f"expected compute pattern {want}, got {pattern}"
    assert cache.computed == 3, f"expected 3 computed calls, got {cache.computed}"


def test_rescaling_polynomial_is_evaluated_highest_degree_first():
    cache = TeaCache(threshold=1.0, coefficients=(1.0, 0.0, 0.0, 2.0, 3.0), num_steps=3)
    cache.previous = torch.ones(6, 4)
    got = cache.rescaled_distance(torch.full((6, 4), 1.5))  # x = 0.5
    want = 0.5**4 + 2 * 0.5 + 3
    assert got == pytest.approx(want), f"expected poly(0.5) = {want}, got {got}"


def test_each_model_size_has_its_own_coefficients():
    assert COEFFICIENTS["14b"][0] == pytest.approx(-3.03318725e05), f"14b coefficients {COEFFICIENTS['14b']}"
    assert COEFFICIENTS["1.3b"][0] == pytest.approx(-5.21862437e04), f"1.3b coefficients {COEFFICIENTS['1.3b']}"
    cases = {(None, "14b"): "14b", (None, "1.3b"): "1.3b", (None, "tiny"): None, ("14b", "tiny"): "14b"}
    got = {case: tea_cache_size(*case) for case in cases}
    assert got == cases, f"expected {cases}, got {got}"
    with pytest.raises(ValueError, match="tea_cache_model"):
        tea_cache_size("7b", "tiny")


def test_a_skipped_call_reuses_the_stored_residual_and_runs_no_block(tiny_models):
    dit = tiny_models.dit
    torch.manual_seed(0)
    x, context, audio = torch.randn(1, 33, 2, 4, 6), torch.randn(1, 512, 32), torch.randn(1, 5, 128)
    t = torch.tensor([500.0])
    runs = []
    hook = dit.blocks[0].register_forward_pre_hook(lambda *_: runs.append(1))
    try:
        cache = TeaCache(threshold=1e9, coefficients=COEFFICIENTS["1.3b"], num_steps=3)
        with torch.no_grad():
            full = dit(x, t, context, audio, tea_cache=cache)[0]
            skipped = dit(x, t, context, audio, tea_cache=cache)[0]
    finally:
        hook.remove()
    assert len(runs) == 1, f"expected the blocks to run once (second call skipped), ran {len(runs)} times"
    diff = max_diff(full, skipped)
    assert diff < 1e-5, f"a skip with the same input must reproduce the full call, differs by {diff}"


def test_backend_counts_dit_calls_and_teacache_skips_steps(tiny_backend, tiny_config):
    request = tiny_request(tiny_config, seconds=0.3, num_steps=6)
    plan = plan_segments(request, tiny_config.planning)
    off = list(tiny_backend.generate(request, plan, CancelToken(), ignore))
    cached = tiny_request(tiny_config, seconds=0.3, num_steps=6, tea_cache_threshold=0.3)
    on = list(tiny_backend.generate(cached, plan, CancelToken(), ignore))
    assert [s.dit_calls for s in off] == [12] * plan.num_segments, f"expected 6 steps x 2 passes, got {off}"
    calls = [s.dit_calls for s in on]
    assert all(4 <= c < 12 for c in calls), f"expected TeaCache to skip steps (4 <= calls < 12), got {calls}"
    assert on[0].frames.shape == off[0].frames.shape, "TeaCache must not change the frame layout"


def ignore(*_) -> None:
    """A progress callback that drops the reports."""


def test_request_threshold_is_limited_and_needs_coefficients(tiny_backend, tiny_config):
    with pytest.raises(RequestError) as err:
        parse_request(body(tea_cache_threshold=0.9), RequestLimits(), tiny_config.generation)
    assert err.value.field == "tea_cache_threshold", f"expected the field named, got {err.value.field}"
    request = tiny_request(tiny_config, seconds=0.3, tea_cache_threshold=0.1)
    plan = plan_segments(request, tiny_config.planning)
    size, tiny_backend.tea_cache_model = tiny_backend.tea_cache_model, None
    try:
        with pytest.raises(RequestError, match="tea_cache_model") as err:
            next(tiny_backend.generate(request, plan, CancelToken(), ignore))
    finally:
        tiny_backend.tea_cache_model = size
    assert err.value.status == 422, f"expected 422, got {err.value.status}"
