"""Fuzzing frames and options with hypothesis (bounded, derandomized): every call either
succeeds with finite outputs or raises one of rgtp's documented errors; a refused frame leaves
the stream's state unchanged and its next frame bit-identical to a stream that never saw it."""

from __future__ import annotations

import copy

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from rgtp.core.selection import FixedKeep, MassKeep
from rgtp.models.config import PruningConfig
from rgtp.runtime import EngineOutputError, FrameError, Pipeline, StreamOptions
from rgtp.runtime.frames import RESIZE_POLICIES
from tests.conftest import moving_frames
from tests.stream_checks import assert_same_result, assert_state_unchanged, clean_run, snapshot

SIZE = 224
SCORE = 0.28  # see tests/test_frame_contract.py
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
DTYPES = [np.uint8, np.uint16, np.int8, np.int64, np.bool_, np.float16, np.float32, np.float64]


@pytest.fixture(scope="module")
def good() -> list[np.ndarray]:
    return list(moving_frames(3, SIZE, speed=8.0))


@st.composite
def frames(draw: st.DrawFn) -> object:
    """Arrays of any dtype and shape, values anywhere in the dtype (NaN, Inf, extremes
    included), given as numpy (maybe with negative strides) or torch; or not arrays at all.
    Well-formed frames come often enough that about half the calls run."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from([None, "frame.png", b"\x00\x01", [[0, 0, 0]], 3.0, object()]))
    dtype = np.dtype(draw(st.sampled_from([np.uint8] * 8 + [np.float32] * 2 + DTYPES)))
    h, w = draw(st.integers(0, 300)), draw(st.integers(0, 300))
    shape = draw(st.sampled_from([(h, w, 3)] * 6 + [(h, w), (h, w, 4), (1, h, w, 3)]))
    ranged = st.floats(0, 1, width=16) if dtype.kind == "f" else hnp.from_dtype(dtype)
    elements = draw(st.sampled_from([hnp.from_dtype(dtype), ranged, ranged]))
    array = draw(hnp.arrays(dtype, shape, elements=elements))
    form = draw(st.sampled_from(["numpy", "flipped", "torch"]))
    if form == "flipped" and array.ndim == 3:
        return array[::-1, :, ::-1]
    if form == "torch" and dtype != np.uint16:  # torch has no uint16 arithmetic
        return torch.from_numpy(array)
    return array


@given(
    frame=frames(),
    float_scale=st.sampled_from([None, 1.0, 255.0]),
    resize=st.sampled_from(RESIZE_POLICIES),
)
@FUZZ
def test_any_frame_runs_or_is_refused_leaving_the_stream_intact(
    pipe, good, frame, float_scale, resize
) -> None:
    options = StreamOptions(
        policy=FixedKeep(pipe.plan.num_tokens // 4),
        task={"score_threshold": SCORE},
        resize=resize,
        float_scale=float_scale,
    )
    reference = clean_run(pipe, good, options)
    stream = prefix_stream(pipe, good, options)
    before = snapshot(stream)
    try:
        result = stream.step(frame)
    except (FrameError, EngineOutputError) as e:
        event(f"refused: {str(e)[:30]}")
        assert_state_unchanged(stream, before)
        assert_same_result(stream.step(good[2]), reference[2])
        return
    event("ran")
    h, w = np.asarray(frame).shape[:2]
    boxes = result.detections.boxes
    assert bool(result.importance.isfinite().all()) and bool(boxes.isfinite().all())
    assert bool((boxes >= 0).all() and (boxes[:, 0::2] <= w).all() and (boxes[:, 1::2] <= h).all())


_prefixes: dict[StreamOptions, object] = {}


def prefix_stream(pipe: Pipeline, good: list[np.ndarray], options: StreamOptions):
    """A stream that has run good[0] (reset) and good[1] (pruned), from a state computed
    once per options."""
    stream = pipe.new_stream(options)
    if options not in _prefixes:
        for f in good[:2]:
            stream.step(f)
        _prefixes[options] = copy.deepcopy(stream.state)
    stream.state = copy.deepcopy(_prefixes[options])
    return stream


NUMBERS = st.one_of(
    st.integers(-3, 300), st.floats(allow_nan=True, allow_infinity=True), st.booleans()
)
VALID = {
    "keep": st.one_of(
        st.none(),
        st.tuples(st.just(FixedKeep), st.integers(1, 196)),
        st.tuples(st.just(MassKeep), st.floats(0.01, 1)),
    ),
    "reset_every": st.integers(0, 10),
    "radius": st.integers(0, 13),
    "nms_iou": st.floats(0.01, 1),
    "score_threshold": st.floats(0.27, 0.3),
    "max_detections": st.integers(1, 200),
    "novelty_share": st.floats(0, 0.99),
    "rollout_blocks": st.one_of(st.none(), st.lists(st.sampled_from([2, 5]), min_size=1)),
}
ANY = {
    "keep": st.tuples(st.sampled_from([FixedKeep, MassKeep]), NUMBERS),
    "rollout_blocks": st.lists(st.integers(-1, 6), max_size=3),
}


@st.composite
def stream_options(draw: st.DrawFn) -> dict[str, object]:
    """Valid values for every option, and in half the cases one option set to anything."""
    values = {name: draw(strategy) for name, strategy in VALID.items()}
    if draw(st.booleans()):
        name = draw(st.sampled_from(sorted(VALID)))
        values[name] = draw(ANY.get(name, NUMBERS))
    return values


@given(options=stream_options())
@settings(FUZZ, max_examples=30)
def test_any_options_open_a_working_stream_or_are_refused(pipe, good, options) -> None:
    keep, rollout_blocks, novelty_share = (
        options.pop(n) for n in ("keep", "rollout_blocks", "novelty_share")
    )
    try:
        policy = None if keep is None else keep[0](keep[1])
        pruning = PruningConfig(rollout_blocks=rollout_blocks, novelty_share=novelty_share)
        stream = pipe.new_stream(policy=policy, pruning=pruning, **options)
    except ValueError as e:
        event(f"refused: {str(e)[:20]}")
        return  # every refused option is a ValueError naming it (tests/test_options.py)
    event("ran")
    for f in good:
        result = stream.step(f)
        assert result.k in pipe.plan.buckets
        assert bool(result.importance.isfinite().all())
        assert len(result.detections) <= options["max_detections"]
