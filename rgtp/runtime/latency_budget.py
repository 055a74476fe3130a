"""A keep policy that holds a latency budget: per step, the largest K bucket whose expected
time on this machine, now, fits the budget.

Expected time = the bucket's baseline (its step time on an idle machine) x the current
slowdown, plus `spread` running standard deviations of that ratio: steps vary from one to
the next, and a budget is held on most steps only with that margin (1.65: ~95 % for normal
noise). Baselines come from `calibrate` at load (each bucket timed on a few frames), or
from the running steps (a bucket's first measurement); a bucket with none yet is
interpolated linearly in K between measured ones. The slowdown is a running average of
measured / baseline over the latest steps, so when another process takes the CPU every
bucket's estimate rises together and the policy steps down to the bucket that still fits.

Reset steps are dense by the method (all N tokens); they are measured like any other, but
no policy chooses their K, so a budget below the dense step's time is missed on them (a
checkerboard reset halves it; `reset_every` spaces them).
"""

from __future__ import annotations

import statistics
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from rgtp.core.checks import check_int, check_real
from rgtp.core.selection import FixedKeep

if TYPE_CHECKING:
    from rgtp.runtime.pipeline import Pipeline


class LatencyBudget:
    """Keep the largest bucket expected to run a step within `ms` milliseconds.

    One object may serve many streams of one pipeline (they share its engines, so what one
    stream measures is true of the others); it is thread-safe. `smoothing`: weight of the
    newest step in the running slowdown (0..1]; `spread`: the margin in standard deviations
    of the step-to-step variation (0: the expected time alone)."""

    def __init__(self, ms: float, smoothing: float = 0.2, spread: float = 1.65) -> None:
        self.ms = check_real("latency budget (ms)", ms, 0.0, float("inf"), low_open=True)
        self.smoothing = check_real("smoothing", smoothing, 0.0, 1.0, low_open=True)
        self.spread = check_real("spread", spread, 0.0, float("inf"))
        self.baseline: dict[int, float] = {}
        self.slowdown = 1.0
        self.variance = 0.0  # running variance of measured / baseline
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LatencyBudget({self.ms:g} ms)"

    def check(self, buckets: Sequence[int]) -> None:
        pass  # the smallest bucket is the fallback: every bucket set serves

    def choose(self, scores: torch.Tensor, buckets: Sequence[int]) -> int:
        with self._lock:
            fitting = [b for b in buckets if self._expected(b, buckets) <= self.ms]
        return fitting[-1] if fitting else buckets[0]

    def observe(self, k: int, ms: float) -> None:
        """A step with `k` tokens took `ms` milliseconds (called by the stream). ValueError
        for a time that is not a positive finite number: one NaN or Inf would stay in the
        running slowdown and every later estimate."""
        check_int("tokens kept (k)", k, 1)
        check_real("step time (ms)", ms, 0.0, float("inf"), low_open=True)
        with self._lock:
            base = self.baseline.setdefault(k, ms / self.slowdown)
            deviation = ms / base - self.slowdown
            self.slowdown += self.smoothing * deviation
            # the exponentially weighted variance matching that running mean
            self.variance = (1 - self.smoothing) * (self.variance + self.smoothing * deviation**2)

    def expected(self, buckets: Sequence[int]) -> dict[int, float]:
        """The expected step time of every bucket now (ms)."""
        with self._lock:
            return {b: self._expected(b, buckets) for b in buckets}

    def _expected(self, k: int, buckets: Sequence[int]) -> float:
        return self._baseline(k, buckets) * (self.slowdown + self.spread * self.variance**0.5)

    def _baseline(self, k: int, buckets: Sequence[int]) -> float:
        if k in self.baseline:
            return self.baseline[k]
        if not self.baseline:  # nothing measured: only the smallest bucket is a safe guess
            return 0.0 if k == buckets[0] else float("inf")
        known = sorted(self.baseline)
        if len(known) == 1:  # time proportional to K: optimistic; the step's time corrects it
            return self.baseline[known[0]] * k / known[0]
        # np.interp holds the end values; extrapolate with the end segments' slopes instead
        lo, hi = (known[0], known[1]) if k < known[0] else (known[-2], known[-1])
        if known[0] <= k <= known[-1]:
            base = float(np.interp(k, known, [self.baseline[b] for b in known]))
        else:
            slope = (self.baseline[hi] - self.baseline[lo]) / (hi - lo)
            base = self.baseline[lo] + slope * (k - lo)
        return max(base, 0.0)

    def calibrate(self, pipeline: Pipeline, frames: Iterable[object], repeats: int = 3) -> None:
        """Baselines of every bucket of `pipeline`: a throwaway stream per bucket runs
        `frames` (a few; the first is its dense step), the median of its pruned steps
        counts (ms), `repeats` passes over the frames. Resets the slowdown to 1: the
        machine is taken as it is now."""
        frames = list(frames)
        if len(frames) < 2:
            raise ValueError("calibration needs at least 2 frames (the first runs dense)")
        buckets = pipeline.plan.buckets
        times: dict[int, float] = {}
        for b in buckets:
            stream = pipeline.new_stream(policy=FixedKeep(b), reset_every=0)
            measured = []
            for _ in range(repeats):
                for frame in frames:
                    result = stream.step(frame)
                    if result is not None and result.k == b:  # not the dense first step
                        measured.append(result.timings["total"])
            times[b] = statistics.median(measured)
        with self._lock:
            self.baseline = times
            self.slowdown, self.variance = 1.0, 0.0
