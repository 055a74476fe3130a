"""Checks that a stream is intact: its state unchanged by a refused input, and its results
bit-identical to a stream that never saw that input."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest
import torch

from rgtp.families.detection.family import FrameResult
from rgtp.runtime import Pipeline, Stream, StreamOptions


def snapshot(stream: Stream) -> dict[str, object]:
    """Copies of every tensor of the stream's state, and its frame index."""
    st = stream.state
    return {
        **{name: t.clone() for name, t in st.tensors().items()},
        "frame_index": st.frame_index,
    }


def assert_state_unchanged(stream: Stream, before: dict[str, object]) -> None:
    after = snapshot(stream)
    assert after.keys() == before.keys()
    for name, value in before.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(after[name], value), f"{name} changed"
        else:
            assert after[name] == value, f"{name} changed: {value} -> {after[name]}"


def assert_same_result(a: FrameResult | None, b: FrameResult | None) -> None:
    """Bit-identical results: the same step, tokens, importance and prediction (detections,
    or a classifier's feature and scores); None for both (a frame that filled a tubelet)."""
    assert (a is None) == (b is None)
    if a is None or b is None:
        return
    assert (a.index, a.reset, a.k) == (b.index, b.reset, b.k)
    assert torch.equal(a.keep, b.keep)
    assert torch.equal(a.importance, b.importance)
    assert (a.tracked is None) == (b.tracked is None)
    if a.tracked is not None:
        assert torch.equal(a.tracked, b.tracked)
    if isinstance(a, FrameResult):
        for part in ("boxes", "scores", "labels"):
            assert torch.equal(getattr(a.detections, part), getattr(b.detections, part)), part
        return
    assert torch.equal(a.feature, b.feature)
    assert (a.scores is None) == (b.scores is None)
    assert a.scores is None or torch.equal(a.scores, b.scores)


def assert_stream_intact(
    pipe: Pipeline,
    frames: Sequence[np.ndarray],
    bad: Callable[[Stream], object],
    error: type[BaseException] | tuple[type[BaseException], ...],
    match: str | None = None,
    options: StreamOptions | None = None,
    at: int = 2,
) -> None:
    """Step `frames[:at]`, then `bad(stream)` must raise `error` and leave the state as it
    was, and every later frame must be bit-identical to a stream that never saw `bad`."""
    options = options or StreamOptions()
    reference = clean_run(pipe, frames, options)
    stream = pipe.new_stream(options)
    results = [stream.step(f) for f in frames[:at]]
    before = snapshot(stream)
    with pytest.raises(error, match=match):
        bad(stream)
    assert_state_unchanged(stream, before)
    results += [stream.step(f) for f in frames[at:]]
    later = [r for r in reference[at:] if r is not None]
    assert not all(r.reset for r in later), "check pruned steps after the bad input"
    for got, want in zip(results, reference, strict=True):
        assert_same_result(got, want)


_clean_runs: dict[tuple, tuple[Pipeline, Sequence[np.ndarray], list[FrameResult]]] = {}


def clean_run(
    pipe: Pipeline, frames: Sequence[np.ndarray], options: StreamOptions
) -> list[FrameResult]:
    """The results of a fresh stream over `frames`, computed once per (pipeline, frames,
    options) while those objects live."""
    key = (id(pipe), id(frames), options)
    hit = _clean_runs.get(key)
    if hit is None or hit[0] is not pipe or hit[1] is not frames:
        stream = pipe.new_stream(options)
        hit = _clean_runs[key] = (pipe, frames, [stream.step(f) for f in frames])
    return hit[2]
