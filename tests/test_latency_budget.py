"""The latency-budget keep policy: its choice from measured step times, and its wiring into
streams (no timing is asserted: the times are given, or whatever the stream measured)."""

from __future__ import annotations

import pytest
import torch

from rgtp.runtime import Pipeline
from rgtp.runtime.latency_budget import LatencyBudget
from tests.conftest import moving_frames

BUCKETS = (16, 32, 64, 128)
NONE = torch.empty(0)


def test_nothing_measured_keeps_the_smallest_bucket() -> None:
    assert LatencyBudget(1e9).choose(NONE, BUCKETS) == 16


def test_the_largest_bucket_that_fits_is_kept_and_load_steps_it_down() -> None:
    policy = LatencyBudget(30.0, smoothing=1.0)  # the newest step alone sets the slowdown
    for k, ms in [(16, 10.0), (32, 15.0), (64, 25.0), (128, 45.0)]:
        policy.observe(k, ms)
    assert policy.baseline == {16: 10.0, 32: 15.0, 64: 25.0, 128: 45.0}
    assert policy.choose(NONE, BUCKETS) == 64
    policy.observe(64, 50.0)  # another process took the CPU: everything is twice as slow
    assert policy.slowdown == pytest.approx(2.0)
    assert policy.expected(BUCKETS) == pytest.approx({16: 20.0, 32: 30.0, 64: 50.0, 128: 90.0})
    assert policy.choose(NONE, BUCKETS) == 32
    policy.observe(32, 15.0)  # and gave it back
    assert policy.choose(NONE, BUCKETS) == 64
    policy.observe(16, 100.0)  # no bucket fits: the smallest
    assert policy.choose(NONE, BUCKETS) == 16


def test_unmeasured_buckets_are_interpolated_in_k() -> None:
    policy = LatencyBudget(30.0, smoothing=1.0)
    policy.observe(128, 40.0)
    # one measurement: time taken as proportional to K
    assert policy.expected(BUCKETS) == pytest.approx({16: 5.0, 32: 10.0, 64: 20.0, 128: 40.0})
    policy.observe(32, 16.0)  # slowdown 1 still (its baseline is its first time)
    expected = policy.expected(BUCKETS)
    assert expected[64] == pytest.approx(24.0)  # between the two measured
    assert expected[16] == pytest.approx(12.0)  # the end segment's slope, extended
    assert policy.choose(NONE, BUCKETS) == 64


def test_bad_budgets_are_refused() -> None:
    with pytest.raises(ValueError, match="latency budget"):
        LatencyBudget(0.0)
    with pytest.raises(ValueError, match="smoothing"):
        LatencyBudget(10.0, smoothing=0.0)


def test_streams_report_every_step_and_calibration_measures_every_bucket(tiny_detector) -> None:
    n = tiny_detector.cfg.backbone.num_tokens
    pipe = Pipeline.from_model(tiny_detector, buckets=[n // 8, n // 2])
    frames = list(moving_frames(4, 224))
    policy = LatencyBudget(1e6)
    policy.calibrate(pipe, frames[:2], repeats=1)
    assert sorted(policy.baseline) == list(pipe.plan.buckets) and policy.slowdown == 1.0
    heard = []

    class Recording(LatencyBudget):
        def observe(self, k: int, ms: float) -> None:
            heard.append((k, ms))
            super().observe(k, ms)

    shared = Recording(1e6)
    shared.baseline = dict(policy.baseline)
    a, b = pipe.new_stream(policy=shared), pipe.new_stream(policy=shared)
    results = [s.step(f) for f in frames for s in (a, b)]
    assert heard == [(r.k, r.timings["total"]) for r in results]
    assert [r.k for r in results[2:]] == [n] * 6  # an unbounded budget keeps the most


def test_steps_that_vary_buy_a_margin() -> None:
    """Alternating 20 % above and below the baseline: the mean says K = 64 fits 30 ms, but
    one step in two would miss it; the spread's margin keeps the bucket below."""
    steady, margined = LatencyBudget(30.0, spread=0.0), LatencyBudget(30.0)
    for policy in (steady, margined):
        for k, ms in [(16, 10.0), (32, 15.0), (64, 25.0), (128, 45.0)]:
            policy.observe(k, ms)
        for i in range(40):
            policy.observe(64, 25.0 * (1.2 if i % 2 else 0.8))
    assert steady.choose(NONE, BUCKETS) == 64
    assert margined.variance > 0.01
    assert margined.choose(NONE, BUCKETS) == 32
