"""Wall-clock timing of the parts of a frame."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch

ENGINE_PARTS = ("embed", "stages", "head")


class PartTimer:
    """Accumulates milliseconds per named part; synchronises CUDA so GPU work is counted."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.ms: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, part: str) -> Iterator[None]:
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
            self.ms[part] += (time.perf_counter() - start) * 1e3

    def summary(self) -> dict[str, float]:
        out = dict(self.ms)
        out["total"] = sum(self.ms.values())
        out["engine"] = sum(self.ms.get(p, 0.0) for p in ENGINE_PARTS)
        out["outside_engine"] = out["total"] - out["engine"]
        return out
