"""Frames are transactions: a frame that fails anywhere (an engine error, non-finite engine
outputs, post-processing, rollout, an interrupt) leaves the stream exactly as it was, and one
stream refuses a second thread."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping

import pytest
import torch

import rgtp.families.detection.family as detection_module
import rgtp.runtime.finish as finish_module
from rgtp.core.selection import FixedKeep
from rgtp.engines.base import Engine, EngineError
from rgtp.runtime import EngineOutputError, Pipeline, StreamBusyError, StreamOptions
from tests.stream_checks import assert_same_result, assert_stream_intact, clean_run, snapshot

SCORE = 0.28  # see tests/test_frame_contract.py


class Fault:
    """While armed, the wrapped engines hand their outputs to `fault`, which may raise or
    corrupt them."""

    def __init__(self, fault: Callable[[dict], dict]) -> None:
        self.fault = fault
        self.armed = False

    def wrap(self, engine: Engine) -> Engine:
        fault = self

        class Faulty:
            spec = engine.spec

            def run(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
                out = engine.run(feeds)
                return fault.fault(out) if fault.armed else out

        return Faulty()


def corrupt(name: str, value: float) -> Callable[[dict], dict]:
    def fault(out: dict) -> dict:
        flat = out[name].flatten().clone()
        flat[7] = value
        out[name] = flat.view(out[name].shape)
        return out

    return fault


def engine_lost(out: dict) -> dict:
    raise EngineError("device lost")


def with_fault(pipe: Pipeline, where: str, fault: Callable[[dict], dict]):
    """A pipeline over the same engines, with one of them (embed, head, or stage i at every
    K) wrapped by a Fault; returns (pipeline, the fault)."""
    engines, switch = pipe.engines, Fault(fault)
    if where in ("embed", "head"):
        return Pipeline(
            dataclasses.replace(engines, **{where: switch.wrap(getattr(engines, where))})
        ), switch
    i = int(where.removeprefix("stage"))
    stages = [dict(s) for s in engines.stages]
    stages[i] = {k: switch.wrap(e) for k, e in stages[i].items()}
    return Pipeline(dataclasses.replace(engines, stages=stages)), switch


def options(pipe: Pipeline, **kw: object) -> StreamOptions:
    return StreamOptions(
        policy=FixedKeep(pipe.plan.num_tokens // 4), task={"score_threshold": SCORE}, **kw
    )


NAN, INF = float("nan"), float("inf")
ENGINE_FAULTS = {
    "embed raises": ("embed", engine_lost, EngineError, r"device lost"),
    "stage 1 raises after stage 0 ran": ("stage1", engine_lost, EngineError, r"device lost"),
    "embed NaN": ("embed", corrupt("patches", NAN), EngineOutputError, r"embed .*\(patches\)"),
    "tokens_out NaN": (
        "stage0",
        corrupt("tokens_out", NAN),
        EngineOutputError,
        r"engine stage0_k49 returned NaN or Inf \(tokens_out\)",
    ),
    "k_new Inf": (
        "stage1",
        corrupt("k_new_4", INF),
        EngineOutputError,
        r"stage1_k49 .*\(k_new_4\)",
    ),
    "v_new -Inf": ("stage1", corrupt("v_new_5", -INF), EngineOutputError, r"\(v_new_5\)"),
    "attn NaN": ("stage1", corrupt("attn_5", NAN), EngineOutputError, r"stage1_k49 .*\(attn_5\)"),
    "head scores NaN": ("head", corrupt("scores", NAN), EngineOutputError, r"head .*\(scores\)"),
    "head boxes Inf": ("head", corrupt("boxes", INF), EngineOutputError, r"head .*\(boxes\)"),
}


@pytest.mark.parametrize(
    ("where", "fault", "error", "message"), ENGINE_FAULTS.values(), ids=ENGINE_FAULTS.keys()
)
def test_an_engine_failure_leaves_the_stream_intact(
    pipe, frames, where, fault, error, message
) -> None:
    faulty_pipe, engine = with_fault(pipe, where, fault)

    def bad(stream) -> None:
        engine.armed = True
        try:
            stream.step(frames[2])
        finally:
            engine.armed = False

    assert_stream_intact(faulty_pipe, frames, bad, error, message, options(pipe))


def test_engine_output_errors_say_the_stream_is_unchanged(pipe, frames) -> None:
    faulty_pipe, engine = with_fault(pipe, "head", corrupt("scores", float("nan")))
    stream = faulty_pipe.new_stream(options(pipe))
    engine.armed = True
    with pytest.raises(EngineOutputError) as caught:
        stream.step(frames[0])
    assert str(caught.value) == (
        "engine head returned NaN or Inf (scores); the frame was refused and the stream is "
        "unchanged"
    )
    assert isinstance(caught.value, EngineError)


def failing(exc: BaseException) -> Callable[..., object]:
    def fail(*args: object, **kwargs: object) -> object:
        raise exc

    return fail


AFTER_THE_ENGINES = [  # (module, function, exception)
    (detection_module, "postprocess", RuntimeError("postprocess failed")),
    (detection_module, "detection_target", RuntimeError("target failed")),
    (finish_module, "token_importance", RuntimeError("rollout failed")),
    (finish_module, "token_importance", KeyboardInterrupt()),
]


@pytest.mark.parametrize(
    ("module", "function", "exc"),
    AFTER_THE_ENGINES,
    ids=[f"{f}-{type(e).__name__}" for _, f, e in AFTER_THE_ENGINES],
)
def test_a_failure_after_the_engines_leaves_the_stream_intact(
    pipe, frames, monkeypatch, module, function, exc
) -> None:
    def bad(stream) -> None:
        with monkeypatch.context() as m:
            m.setattr(module, function, failing(exc))
            stream.step(frames[2])

    assert_stream_intact(pipe, frames, bad, type(exc), None, options(pipe))


def test_a_failure_on_the_first_frame_leaves_a_fresh_stream(pipe, frames) -> None:
    faulty_pipe, engine = with_fault(pipe, "stage1", engine_lost)

    def bad(stream) -> None:
        engine.armed = True
        try:
            stream.step(frames[0])
        finally:
            engine.armed = False

    assert_stream_intact(faulty_pipe, frames, bad, EngineError, "device lost", options(pipe), at=0)


def test_a_nan_engine_output_never_reaches_the_caches(pipe, frames) -> None:
    """The issue's case: once a NaN got into the caches, every later frame gave nothing.
    With reset_every=0 no reset frame would ever clean them."""
    faulty_pipe, engine = with_fault(pipe, "stage0", corrupt("k_new_1", float("nan")))
    stream = faulty_pipe.new_stream(options(pipe, reset_every=0))
    stream.step(frames[0])
    engine.armed = True
    for f in frames[1:]:
        with pytest.raises(EngineOutputError):
            stream.step(f)
    assert all(bool(t.isfinite().all()) for t in stream.state.tensors().values())
    engine.armed = False
    result = stream.step(frames[1])
    assert not result.reset and len(result.detections) > 0


def test_a_stream_refuses_a_second_thread_while_a_frame_runs(pipe, frames) -> None:
    entered, release = threading.Event(), threading.Event()

    def hold(out: dict) -> dict:
        entered.set()
        assert release.wait(30)
        return out

    held_pipe, engine = with_fault(pipe, "head", hold)
    stream = held_pipe.new_stream(options(pipe))
    results = [stream.step(f) for f in frames[:2]]
    engine.armed = True
    worker = threading.Thread(target=lambda: results.append(stream.step(frames[2])))
    worker.start()
    try:
        assert entered.wait(30)
        engine.armed = False
        before = snapshot(stream)
        with pytest.raises(StreamBusyError, match="processing a frame in another thread"):
            stream.step(frames[3])
        with pytest.raises(StreamBusyError, match=r"pipeline\.new_stream\(\)"):
            stream.reset()
        assert all(torch.equal(before[n], t) for n, t in stream.state.tensors().items())
    finally:
        release.set()
        worker.join()
    results.append(stream.step(frames[3]))
    for got, want in zip(results, clean_run(pipe, frames, options(pipe)), strict=True):
        assert_same_result(got, want)
