"""Calibration feeds for static int8: what each graph of a package is fed when the runtime
runs it on video.

Static quantization fixes every activation's int8 scale ahead of time, so the scales must
come from the tensors the graphs really see: the stage graphs' kept tokens, caches and
attention inputs at each K bucket, under the method's own gathers and scatters. Recording
them from a float32 pipeline running streams gives exactly that; random inputs would not.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

from rgtp.core.selection import FixedKeep
from rgtp.engines.base import Engine
from rgtp.export.quantize import Feeds
from rgtp.runtime.pipeline import Pipeline


class _Recorder:
    """An engine that keeps a copy of the first `limit` feeds it runs on."""

    def __init__(self, engine: Engine, sink: list[dict[str, np.ndarray]], limit: int) -> None:
        self.engine, self.sink, self.limit = engine, sink, limit
        self.spec = engine.spec

    def run(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if len(self.sink) < self.limit:
            self.sink.append({k: v.detach().cpu().numpy().copy() for k, v in feeds.items()})
        return self.engine.run(feeds)


def record_feeds(
    pipe: Pipeline,
    videos: Iterable[Sequence[np.ndarray]],
    ks: Sequence[int] | None = None,
    per_graph: int = 8,
) -> Feeds:
    """Run every video through a fresh stream at each K of `ks` (None: every bucket of the
    plan) and return, per graph of the package, up to `per_graph` feeds it was called with.
    Stage graphs are keyed as the package names its fixed-K graphs ("stage1_k512"; the
    dense reset frame feeds the K = N one); `export.quantized_package` calibrates a
    stage's symbolic-K graph on all of them. The pipeline is left as it was."""
    videos = list(videos)
    engines = pipe.engines
    plan = pipe.plan
    feeds: Feeds = {}
    saved = (engines.embed, engines.head, dict(engines.extra), [dict(s) for s in engines.stages])
    try:
        engines.embed = _Recorder(engines.embed, feeds.setdefault("embed", []), per_graph)
        if engines.head is not None:
            engines.head = _Recorder(engines.head, feeds.setdefault("head", []), per_graph)
        for name, engine in engines.extra.items():
            engines.extra[name] = _Recorder(engine, feeds.setdefault(name, []), per_graph)
        for i, by_k in enumerate(engines.stages):
            for k, engine in by_k.items():
                by_k[k] = _Recorder(
                    engine, feeds.setdefault(plan.stage_spec(i, k).name, []), per_graph
                )
        wanted = sorted({k for i in range(len(plan.stages)) for k in plan.buckets_of(i)})
        for k in ks or wanted:
            for video in videos:
                stream = pipe.new_stream(policy=FixedKeep(min(k, plan.num_tokens)), reset_every=0)
                for frame in video:
                    stream.step(frame)
    finally:
        engines.embed, engines.head = saved[0], saved[1]
        engines.extra.clear()
        engines.extra.update(saved[2])
        for by_k, original in zip(engines.stages, saved[3], strict=True):
            by_k.clear()
            by_k.update(original)
    return {name: calls for name, calls in feeds.items() if calls}
