"""The in-process faults serving met: `Stream.step` then `Pipeline.step_many` on the same
stream (both under inference mode), and a latency budget told a time that is not a positive
finite number (refused, estimates unchanged), with messages naming what is accepted."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rgtp.core.checks import check_real
from rgtp.core.selection import FixedKeep
from rgtp.runtime import Pipeline
from rgtp.runtime.latency_budget import LatencyBudget
from tests.conftest import moving_frames
from tests.stream_checks import assert_same_result


def test_step_then_step_many_on_the_same_stream_equals_steps_alone(tiny_detector) -> None:
    n = tiny_detector.cfg.backbone.num_tokens
    pipe = Pipeline.from_model(tiny_detector, [n // 4, n])
    frames = list(moving_frames(5, tiny_detector.cfg.backbone.img_size))
    mixed, alone = (pipe.new_stream(policy=FixedKeep(n // 4)) for _ in range(2))
    for t, frame in enumerate(frames):
        want = alone.step(frame)
        # steps alone and batched, in turn, on one stream
        got = mixed.step(frame) if t % 2 == 0 else pipe.step_many([mixed], [frame])[0]
        assert_same_result(got, want)


def test_a_latency_budget_refuses_times_that_are_not_positive_and_finite() -> None:
    budget = LatencyBudget(20.0)
    budget.observe(64, 10.0)
    before = budget.expected([32, 64])
    for bad in (math.nan, math.inf, -math.inf, 0.0, -1.0, np.float64("nan")):
        with pytest.raises(ValueError, match=r"step time \(ms\) must be a number in \(0, inf\)"):
            budget.observe(64, bad)
    with pytest.raises(ValueError, match=r"tokens kept \(k\) must be an integer >= 1"):
        budget.observe(0, 10.0)
    assert budget.expected([32, 64]) == before  # nothing of them reached the estimates
    assert all(math.isfinite(v) for v in before.values())
    with pytest.raises(ValueError, match=r"latency budget \(ms\) must be a number in \(0, inf\)"):
        LatencyBudget(math.inf)


def test_an_infinite_end_of_a_range_reads_open() -> None:
    with pytest.raises(ValueError, match=r"must be a number in \(-inf, 1\], got inf"):
        check_real("x", math.inf, -math.inf, 1.0)
    assert check_real("x", 2.0, 0.0, math.inf) == 2.0
