"""The GPU path's pieces that run on the CPU: stream-owned buffers at fixed addresses, the
CUDA-graph cache's keying (with a fake graph), reduced-precision torch engines, the
finiteness check in float16, and the GPU benchmark script end to end (a tiny dry run)."""

from __future__ import annotations

import contextlib
import copy
import itertools
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from rgtp.core.selection import FixedKeep
from rgtp.engines import cuda_graphs
from rgtp.engines.cuda_graphs import GraphCache
from rgtp.runtime import Pipeline
from rgtp.runtime.outputs import OutputChecks
from rgtp.runtime.timing import PartTimer
from tests.conftest import moving_frames, small_detector, synthvid_frames

ROOT = Path(__file__).resolve().parents[1]


class RecordingEngine:
    """Wraps an engine and records the address of every input of every call."""

    def __init__(self, engine) -> None:
        self.engine, self.spec = engine, engine.spec
        self.addresses: list[dict[str, int]] = []

    def run(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.addresses.append({n: t.data_ptr() for n, t in feeds.items()})
        return self.engine.run(feeds)


def test_stages_read_the_same_buffers_on_every_step_of_a_bucket(tiny_detector) -> None:
    pipe = Pipeline.from_model(tiny_detector, [20, 60])
    pipe.engines.static_inputs = True  # as a CUDA-graph backend declares
    recorders = {}
    for i, engines in enumerate(pipe.engines.stages):
        for k in (20, 60):
            recorders[i, k] = engines[k] = RecordingEngine(engines[k])
    stream = pipe.new_stream(policy=FixedKeep(20), reset_every=4)
    other = pipe.new_stream(policy=FixedKeep(60), reset_every=0)
    for frame in moving_frames(7, 224):
        stream.step(frame)
        other.step(frame)
    assert all(rec.addresses for rec in recorders.values())
    # stage 0 at K=20: only `stream` calls it, on its 5 pruned steps, at the same addresses
    first = recorders[0, 20].addresses
    assert len(first) == 5 and all(a == first[0] for a in first)
    # the other stream's buffers are its own
    theirs = recorders[0, 60].addresses
    assert all(a == theirs[0] for a in theirs)
    assert theirs[0]["tokens"] != first[0]["tokens"]
    assert theirs[0]["k_cache_0"] != first[0]["k_cache_0"]


def test_in_place_buffers_give_the_same_results_as_a_fresh_stream_per_step(tiny_detector):
    """Writing the maintained output and the rollout rows in place (with an undo journal)
    must not change what a stream computes: two streams, one stepped alone and one
    interleaved with a third, keep the same tokens and maps."""
    pipe = Pipeline.from_model(tiny_detector, [24])
    a = pipe.new_stream(policy=FixedKeep(24), reset_every=3)
    b = pipe.new_stream(policy=FixedKeep(24), reset_every=3)
    c = pipe.new_stream(policy=FixedKeep(24), reset_every=0)
    frames = list(moving_frames(6, 224))
    for frame, noise in zip(frames, moving_frames(6, 224, seed=3), strict=True):
        ra = a.step(frame)
        c.step(noise)
        rb = b.step(frame)
        assert torch.equal(ra.keep, rb.keep)
        assert torch.equal(a.out_map, b.out_map)


class FakeGraph:
    """Stands in for torch.cuda.CUDAGraph: counts replays (capture runs nothing)."""

    captured: ClassVar[list[FakeGraph]] = []

    def __init__(self) -> None:
        self.replays = 0
        FakeGraph.captured.append(self)

    def replay(self) -> None:
        self.replays += 1


class FakeCapture:
    """Stands in for torch.cuda.graph; records the capture mode it was asked for."""

    modes: ClassVar[list[str]] = []

    def __init__(
        self, graph: FakeGraph, stream: object = None, capture_error_mode: str = "global"
    ) -> None:
        self.graph = graph
        FakeCapture.modes.append(capture_error_mode)

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> None:
        return None


@pytest.fixture
def fake_cuda(monkeypatch):
    FakeGraph.captured, FakeCapture.modes = [], []
    monkeypatch.setattr(cuda_graphs.torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(cuda_graphs.torch.cuda, "graph", FakeCapture)
    monkeypatch.setattr(cuda_graphs, "_capture_streams", {})
    monkeypatch.setattr(cuda_graphs.torch.cuda, "Stream", lambda device=None: object())

    class Stream:
        def synchronize(self) -> None:
            pass

    monkeypatch.setattr(cuda_graphs.torch.cuda, "current_stream", lambda device=None: Stream())


def test_graph_cache_warms_up_once_per_shape_then_captures_per_buffers(fake_cuda) -> None:
    cache = GraphCache(torch.device("cuda"), warmup=1, max_graphs=2)
    calls = []

    def forward(inputs):
        calls.append({n: t.data_ptr() for n, t in inputs.items()})
        return {"y": inputs["x"] + 1}

    a, b, c = torch.zeros(3), torch.zeros(3), torch.zeros(3)
    cache.run({"x": a}, forward)  # new shape: eager warm-up
    assert (cache.eager_runs, cache.captures, len(calls)) == (1, 0, 1)
    out = cache.run({"x": a}, forward)  # same buffers: captured (forward traced once)
    assert (cache.captures, len(calls)) == (1, 2) and FakeGraph.captured[0].replays == 1
    out.pop("y")  # the caller may consume its dict: the graph keeps its own
    again = cache.run({"x": a}, forward)  # replayed: forward not called
    assert len(calls) == 2 and "y" in again and FakeGraph.captured[0].replays == 2
    cache.run({"x": b}, forward)  # other buffers, shape warmed up: captured at once
    assert (cache.eager_runs, cache.captures, len(cache)) == (1, 2, 2)
    cache.run({"x": c}, forward)  # beyond max_graphs: the least recently used goes
    assert len(cache) == 2 and cache.captures == 3
    cache.run({"x": a}, forward)  # a's graph was dropped: captured again
    assert cache.captures == 4
    cache.run({"x": torch.zeros(5)}, forward)  # a new shape warms up eagerly again
    assert cache.eager_runs == 2
    # other threads may enqueue while one captures: every capture is thread-local
    assert FakeCapture.modes == ["thread_local"] * 4


def test_graph_cache_refuses_a_cpu_device() -> None:
    with pytest.raises(ValueError, match="CUDA device"):
        GraphCache(torch.device("cpu"))


def test_cuda_graphs_are_refused_off_cuda(tiny_detector) -> None:
    from rgtp.engines.base import EngineError

    with pytest.raises(EngineError, match="CUDA graphs need a CUDA device"):
        Pipeline.from_model(tiny_detector, [20], cuda_graphs=True)
    with pytest.raises(EngineError, match="precision must be one of"):
        Pipeline.from_model(tiny_detector, [20], precision="fp8")


def test_bfloat16_engines_keep_bfloat16_caches_and_equal_the_dense_model_in_bfloat16(
    tiny_detector,
) -> None:
    frames = list(moving_frames(4, 224))
    pipe = Pipeline.from_model(tiny_detector, [30], precision="bf16")
    stream = pipe.new_stream(policy=FixedKeep(30), reset_every=0)
    result = stream.step(frames[0])  # the dense step
    assert stream.state.k_cache[0].dtype == torch.bfloat16
    assert stream.out_map.dtype == torch.bfloat16
    assert result.importance.dtype == torch.float32  # rollout runs in float32
    assert next(tiny_detector.parameters()).dtype == torch.float32  # the caller's model
    dense = copy.deepcopy(tiny_detector).to(torch.bfloat16)
    pixels = torch.from_numpy(frames[0]).permute(2, 0, 1)[None].to(torch.bfloat16)
    with torch.inference_mode():
        fmap = dense.features(pixels).flatten(1, 2)[0].float()
    err = (stream.out_map.float() - fmap).abs().max() / fmap.abs().max()
    assert err <= 2e-2
    for frame in frames[1:]:
        assert stream.step(frame).k == 30


def test_the_finiteness_check_does_not_overflow_on_float16_maps() -> None:
    checks = OutputChecks()
    big = torch.full((4096, 768), 8.0, dtype=torch.float16)  # its float16 sum is inf
    assert not torch.isfinite(big.sum())
    checks.add("stage", {"tokens_out": big})
    checks.raise_if_not_finite()  # no error: every element is finite
    checks.add("stage", {"k_new_0": torch.tensor([1.0, float("nan")], dtype=torch.float16)})
    with pytest.raises(RuntimeError, match="NaN or Inf"):
        checks.raise_if_not_finite()


def test_part_timer_modes() -> None:
    with pytest.raises(ValueError, match="timing must be one of"):
        PartTimer(torch.device("cpu"), "never")
    timer = PartTimer(torch.device("cpu"), "sync")  # no CUDA: plain wall clock
    with timer("stages"):
        pass
    with timer("select"):
        pass
    out = timer.summary()
    assert set(out) >= {"stages", "select", "total", "engine", "outside_engine"}
    assert out["total"] == pytest.approx(out["stages"] + out["select"])


def test_gpu_benchmark_dry_run_on_the_cpu(tmp_path, monkeypatch) -> None:
    """The GPU benchmark's whole flow on a tiny setting (CPU, eager): the check against the
    CPU reference, the dense baseline, pruned rows with every figure, the JSON."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("gpu", None)
    import gpu

    out = tmp_path / "gpu.json"
    rc = gpu.main(
        [
            "--device=cpu",
            "--plan=224:64",
            "--precisions=fp32",
            "--frames=1",
            "--warmup=1",
            "--check-size=224",
            "--check-keep=64",
            "--check-frames=2",
            f"--json={out}",
        ]
    )
    assert rc == 0
    import json

    report = json.loads(out.read_text())
    assert report["errors"] == []
    assert report["check"][0]["within_tolerance"]
    (row,) = report["pruned"]
    assert row["k"] == 64 and row["flops_ratio"] > 1 and row["backbone_ms"] > 0
    assert 0 <= row["outside_engine_share"] < 1
    assert np.isfinite(row["speedup"])


class ReplayingGraph:
    """A CPU stand-in for a captured CUDA graph with its semantics: replay recomputes the
    captured function from the captured input tensors (whatever they hold now) into the
    captured output tensors, in place."""

    def __init__(self, forward, inputs) -> None:
        self.forward, self.inputs = forward, dict(inputs)

    def replay(self) -> None:
        with emulated_graph():
            fresh = self.forward(self.inputs)
        for name, out in self.outputs.items():
            out.copy_(fresh[name])


IN_GRAPH = [False]  # whether the emulated graph's function runs (as on a GPU, captured)


@contextlib.contextmanager
def emulated_graph():
    IN_GRAPH[0] = True
    try:
        yield
    finally:
        IN_GRAPH[0] = False


def emulate_capture(self, inputs, forward):
    graph = ReplayingGraph(forward, inputs)
    with emulated_graph():
        graph.outputs = {n: t.clone() for n, t in forward(inputs).items()}
    self.captures += 1
    return cuda_graphs._Captured(graph, graph.outputs)


def test_a_stream_on_replayed_graphs_equals_the_eager_stream(monkeypatch):
    """Every graph of a frame (stages, tracking, top-K, rollout with the commit) replayed on
    the stream's buffers, emulated on the CPU: the same kept tokens, maps and importance as
    eager, over resets and two interleaved streams. Catches a buffer a replay overwrites while
    someone still reads it (results, the previous step's importance or patches), and checks
    that a graph's order (commit, then rollout over the committed rows) equals the eager one
    (rollout with the step's rows standing in, then the commit)."""
    from rgtp.runtime import finish as finish_module
    from rgtp.runtime import step as step_module
    from rgtp.runtime import stream as stream_module

    monkeypatch.setattr(GraphCache, "_capture", emulate_capture)
    # what a captured graph runs: the commit first, then rollout over the committed rows
    monkeypatch.setattr(finish_module, "capturing", lambda t: IN_GRAPH[0])
    cuda = torch.device("cuda")
    monkeypatch.setattr(
        stream_module,
        "step_graphs",
        lambda engines: (
            {n: GraphCache(cuda) for n in step_module.STEP_GRAPHS}
            if engines.static_inputs
            else None
        ),
    )
    monkeypatch.setattr(cuda_graphs.torch.cuda, "current_stream", lambda device=None: _NoSync())
    frames = synthvid_frames(9)  # the shipped model on its data: importance moves
    detector = small_detector()
    eager = Pipeline.from_model(detector, [20, 40])
    graphed = Pipeline.from_model(detector, [20, 40])
    graphed.engines.static_inputs = True
    for engines in graphed.engines.stages:
        shared = GraphCache(cuda)
        for engine in engines.values():
            engine.graphs = shared
    runs = {}
    for name, pipe in (("eager", eager), ("graphs", graphed)):
        a = pipe.new_stream(policy=FixedKeep(20), reset_every=4)
        b = pipe.new_stream(policy=FixedKeep(40), reset_every=0)
        runs[name] = [(a.step(f), b.step(f)) for f in frames]
        runs[name + "-maps"] = (a.out_map.clone(), b.out_map.clone())
    assert graphed.engines.stages[0][20].graphs.captures > 0
    steps = [a.importance for a, _ in runs["eager"]]
    assert any(not torch.equal(x, y) for x, y in itertools.pairwise(steps))  # it moves
    for (ea, eb), (ga, gb) in zip(runs["eager"], runs["graphs"], strict=True):
        for e, g in ((ea, ga), (eb, gb)):
            assert torch.equal(e.keep, g.keep)
            assert torch.allclose(e.importance, g.importance, atol=1e-7)
            assert (e.tracked is None) == (g.tracked is None)
    for e, g in zip(runs["eager-maps"], runs["graphs-maps"], strict=True):
        assert torch.allclose(e, g, atol=1e-6)


class _NoSync:
    def synchronize(self) -> None:
        pass


def test_a_shape_that_cannot_be_captured_stays_eager(fake_cuda, monkeypatch) -> None:
    attempts = []

    def refuse(self, inputs, forward):
        attempts.append(1)
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(GraphCache, "_capture", refuse)
    cache = GraphCache(torch.device("cuda"))
    x = torch.ones(2)
    assert cache.run({"x": x}, lambda f: {"y": f["x"] * 2})["y"].tolist() == [2, 2]  # warm-up
    with pytest.warns(UserWarning, match="no CUDA graph"):
        assert cache.run({"x": x}, lambda f: {"y": f["x"] * 3})["y"].tolist() == [3, 3]
    assert cache.run({"x": x}, lambda f: {"y": f["x"] * 4})["y"].tolist() == [4, 4]
    assert len(attempts) == 1 and len(cache) == 0 and cache.eager_runs == 3
