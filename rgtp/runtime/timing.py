"""Timing of the parts of a frame: wall clock on the CPU; on CUDA, CUDA events by default
(no host synchronisation inside a frame), or wall clock with a device synchronisation on
entry and exit of every part ("sync": exact per-part wall time, at about 30 syncs a
frame)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch

ENGINE_PARTS = ("embed", "stages", "head")
TIMINGS = ("auto", "sync")


class PartTimer:
    """Accumulates milliseconds per named part.

    mode "auto": on CUDA, events recorded on the current stream around each part, read once
    in `summary` (the GPU's time between them, queued work included); on the CPU, wall
    clock. "sync": wall clock, synchronising CUDA on entry and exit of every part."""

    def __init__(self, device: torch.device, mode: str = "auto") -> None:
        if mode not in TIMINGS:
            raise ValueError(f"timing must be one of {TIMINGS}, got {mode!r}")
        cuda = device.type == "cuda"
        self.events = cuda and mode == "auto"
        self.sync = cuda and mode == "sync"
        self.ms: dict[str, float] = defaultdict(float)
        self._marks: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []

    @contextmanager
    def __call__(self, part: str) -> Iterator[None]:
        if self.events:
            start = torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end = torch.cuda.Event(enable_timing=True)
                end.record()
                self._marks.append((part, start, end))
            return
        if self.sync:
            torch.cuda.synchronize()
        start_s = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize()
            self.ms[part] += (time.perf_counter() - start_s) * 1e3

    def summary(self) -> dict[str, float]:
        if self._marks:  # one wait, for the last part: the earlier events are done then
            self._marks[-1][2].synchronize()
        for part, start, end in self._marks:
            self.ms[part] += start.elapsed_time(end)
        self._marks.clear()
        out = dict(self.ms)
        out["total"] = sum(self.ms.values())
        out["engine"] = sum(self.ms.get(p, 0.0) for p in ENGINE_PARTS)
        out["outside_engine"] = out["total"] - out["engine"]
        return out
