"""The TensorRT runtime's own logic on the CPU, against fakes of TensorRT's engine and
execution context that record every call: which buffer is bound where and when, the profile
of every K, user-managed memory shared by a plan's contexts, every refusal of TensorRT turned
into a clear EngineError, two threads never interleaving on one plan, and CUDA graphs (the
real `GraphCache` on fake CUDA graphs) each captured from a context of its own that nothing
changes after its capture, captured one at a time in thread-local mode.

(Nothing here runs TensorRT; `tests/test_trt.py` builds real plans and checks the plans'
validation.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
import torch

from rgtp.engines import cuda_graphs
from rgtp.engines.base import EngineError, EngineSet
from rgtp.engines.cuda_graphs import GraphCache
from rgtp.engines.dtypes import dtype
from rgtp.engines.trt_backend import trt_engine_set, warmup
from rgtp.engines.trt_context import SharedPlan, TrtEngine
from rgtp.package.plan import GraphSpec, StagePlan, stage_graph_name
from tests.conftest import tiny_config

CPU = torch.device("cpu")
STREAM = 7  # the fake CUDA stream handle
FAKE_TRT = SimpleNamespace(
    ExecutionContextAllocationStrategy=SimpleNamespace(
        STATIC="STATIC", ON_PROFILE_CHANGE="ON_PROFILE_CHANGE", USER_MANAGED="USER_MANAGED"
    )
)
FAKE_RTX = SimpleNamespace(
    ExecutionContextAllocationStrategy=FAKE_TRT.ExecutionContextAllocationStrategy,
    DynamicShapesKernelSpecializationStrategy=SimpleNamespace(LAZY="LAZY", EAGER="EAGER"),
)
TRT_DTYPES = {"float32": "FLOAT", "int64": "INT64"}
CAPTURE = threading.local()  # .graph: the FakeCUDAGraph this thread is capturing


class FakeCUDAGraph:
    """torch.cuda.CUDAGraph: what its capture enqueued, each context with the addresses it
    was bound to then; a replay runs those again."""

    def __init__(self) -> None:
        self.enqueued: list[tuple[FakeContext, dict[str, int]]] = []

    def replay(self) -> None:
        for ctx, addresses in self.enqueued:
            ctx.executed.append(dict(addresses))


class FakeCapture:
    """torch.cuda.graph: counts captures that overlap in time, records every mode."""

    active = 0
    overlaps = 0
    modes: ClassVar[list[str]] = []

    def __init__(
        self, graph: FakeCUDAGraph, stream: Any = None, capture_error_mode: str = "global"
    ):
        self.graph = graph
        FakeCapture.modes.append(capture_error_mode)

    def __enter__(self) -> None:
        FakeCapture.active += 1
        FakeCapture.overlaps += FakeCapture.active > 1
        CAPTURE.graph = self.graph
        time.sleep(1e-4)  # let another thread in, if anything lets it

    def __exit__(self, *exc: object) -> None:
        CAPTURE.graph = None
        FakeCapture.active -= 1


class FakeCudaStream:
    cuda_stream = 99

    def __init__(self, device: Any = None) -> None:
        pass


@pytest.fixture
def fake_cuda(monkeypatch):
    """GraphCache's CUDA calls on the CPU (graphs, capture, its capture stream)."""
    FakeCapture.active, FakeCapture.overlaps, FakeCapture.modes = 0, 0, []
    monkeypatch.setattr(cuda_graphs.torch.cuda, "CUDAGraph", FakeCUDAGraph)
    monkeypatch.setattr(cuda_graphs.torch.cuda, "graph", FakeCapture)
    monkeypatch.setattr(cuda_graphs.torch.cuda, "Stream", FakeCudaStream)
    monkeypatch.setattr(cuda_graphs, "_capture_streams", {})  # no fake stream stays behind


class FakeStreams:
    """`trt_context.Streams` without CUDA: a fixed handle; counts the ordered sections."""

    def __init__(self) -> None:
        self.depth = 0

    def handle(self) -> int:
        return STREAM

    @contextmanager
    def ordered(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1


class FakeEngine:
    """A deserialized plan: one spec per profile; contexts record their calls in `log`.

    fail: a context call ("set_input_shape", ...) that returns False; raise_profile: the
    profile switch raises as TensorRT 10's binding does; v2: TensorRT >= 10.1 (sized
    device memory); shapes: output shapes the contexts report instead of the spec's."""

    def __init__(self, specs: list[GraphSpec], memory: int = 4096, v2: bool = True) -> None:
        self.specs = specs
        self.num_optimization_profiles = len(specs)
        spec = specs[0]
        self.tensors = {t.name: t.dtype for t in (*spec.inputs, *spec.outputs)}
        self.num_io_tensors = len(self.tensors)
        if v2:
            self.device_memory_size_v2 = memory
        else:
            self.device_memory_size = memory
        self.v2 = v2
        self.contexts: list[FakeContext] = []
        self.log: list[tuple[int, str, tuple]] = []  # (context index, call, arguments)
        self.fail: str | None = None
        self.raise_profile = False
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.owner: int | None = None  # the thread inside a run (bind ... execute)
        self.overlaps = 0
        self.after_capture: list[tuple[int, str]] = []  # (context, call) changing a captured one
        self.capturable = True  # TensorRT-RTX's is_stream_capturable, where `rtx`
        self.rtx = False
        self.configs: list[SimpleNamespace] = []  # TensorRT-RTX runtime configurations

    def get_tensor_name(self, i: int) -> str:
        return list(self.tensors)[i]

    def get_tensor_dtype(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(name=TRT_DTYPES[self.tensors[name]])

    def create_runtime_config(self) -> SimpleNamespace:
        config = SimpleNamespace(dynamic_shapes_kernel_specialization_strategy="LAZY")
        config.set_execution_context_allocation_strategy = lambda s: setattr(config, "memory", s)
        self.configs.append(config)
        return config

    def create_execution_context(self, strategy: Any) -> FakeContext | None:
        if self.fail == "create_execution_context":
            return None
        if isinstance(strategy, SimpleNamespace):  # a TensorRT-RTX runtime configuration
            strategy = (strategy.memory, strategy.dynamic_shapes_kernel_specialization_strategy)
        kind = FakeRtxContext if self.rtx else FakeContext if self.v2 else FakeContext10_0
        ctx = kind(self, len(self.contexts), strategy)
        self.contexts.append(ctx)
        return ctx


class FakeContext:
    def __init__(self, engine: FakeEngine, index: int, strategy: str) -> None:
        self.engine, self.index, self.strategy = engine, index, strategy
        self.memory: tuple[int, int | None] | None = None
        self.active_optimization_profile = 0
        self.input_shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.setter: dict[str, int] = {}  # the thread that set each address
        self.executed: list[dict[str, int]] = []  # the addresses of each run
        self.captured = False  # a CUDA graph captured this context's work

    def _call(self, name: str, *args: Any, last: bool = False) -> bool:
        """Record a call; `last`: the call that ends a critical section (a profile switch,
        a run's enqueue), which another thread's calls must not interleave with."""
        if self.captured and name != "execute_async_v3":
            self.engine.after_capture.append((self.index, name))
        me = threading.get_ident()
        if self.engine.owner not in (None, me):
            self.engine.overlaps += 1
        self.engine.owner = me
        self.engine.log.append((self.index, name, args))
        time.sleep(1e-4)  # let another thread in, if anything lets it
        if last:
            self.engine.owner = None
        return self.engine.fail != name

    def set_device_memory(self, ptr: int, size: int) -> None:
        self.memory = (ptr, size)
        if self.captured:
            self.engine.after_capture.append((self.index, "set_device_memory"))

    def set_optimization_profile_async(self, index: int, stream: int) -> bool:
        if self.engine.raise_profile:
            raise RuntimeError("Error in set optimization profile async.")
        self.active_optimization_profile = index
        return self._call("set_optimization_profile_async", index, stream, last=True)

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.input_shapes[name] = tuple(shape)
        return self._call("set_input_shape", name, tuple(shape))

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        spec = self.engine.specs[self.active_optimization_profile]
        # at the batch of the input shapes set (a stage graph's B)
        dims = spec.symbolic_dims(self.input_shapes)
        want = {t.name: t.concrete(dims) for t in spec.outputs}
        return self.engine.shapes.get(name, want[name])

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        if name not in self.engine.tensors:
            return False
        self.addresses[name] = ptr
        self.setter[name] = threading.get_ident()
        return self._call("set_tensor_address", name, ptr)

    def execute_async_v3(self, stream: int) -> bool:
        me = threading.get_ident()
        if any(self.setter.get(n) != me for n in self.engine.tensors):
            self.engine.overlaps += 1  # would run on addresses another thread bound
        graph = getattr(CAPTURE, "graph", None)
        if graph is None:
            self.executed.append(dict(self.addresses))
        else:  # captured, not run
            graph.enqueued.append((self, dict(self.addresses)))
            self.captured = True
        return self._call("execute_async_v3", stream, last=True)


class FakeRtxContext(FakeContext):
    """TensorRT-RTX: says whether work on a stream can be captured."""

    def is_stream_capturable(self, stream: int) -> bool:
        self.engine.log.append((self.index, "is_stream_capturable", (stream,)))
        return self.engine.capturable


class FakeContext10_0(FakeContext):
    """TensorRT 10.0: device memory is a write-only address, no size."""

    def __getattribute__(self, name: str) -> Any:
        if name == "set_device_memory":
            raise AttributeError(name)
        return super().__getattribute__(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "device_memory":
            self.memory = (value, None)
        else:
            super().__setattr__(name, value)


def records(plan: StagePlan, layout: str, order: list[int] | None = None) -> list[dict]:
    """The manifest's "trt" plan records of `plan`; per-stage profiles numbered as `order`
    lists the buckets (default: by increasing K)."""
    recs = [{"name": n, "file": f"trt/{n}.plan", "profiles": None} for n in ("embed", "head")]
    ks = order or sorted(plan.buckets)
    for i in range(len(plan.stages)):
        if layout == "per-stage":
            profiles = {str(k): p for p, k in enumerate(ks)}
            recs.append({"name": f"stage{i}", "file": f"trt/stage{i}.plan", "profiles": profiles})
        else:
            for k in plan.buckets:
                name = stage_graph_name(i, k)
                recs.append({"name": name, "file": f"trt/{name}.plan", "profiles": {str(k): 0}})
    return recs


def specs_of(plan: StagePlan, rec: dict) -> list[GraphSpec]:
    """The spec of every profile of a plan record."""
    name = rec["name"]
    if name in ("embed", "head"):
        return [plan.embed_spec() if name == "embed" else plan.head_spec()]
    stage = int(name.removeprefix("stage").split("_")[0])
    by_profile = sorted(rec["profiles"].items(), key=lambda kv: kv[1])
    return [plan.stage_spec(stage, int(k)) for k, _ in by_profile]


class Loaded:
    """EngineSet of fakes: plans by file, the SharedPlans."""

    def __init__(
        self,
        layout: str = "per-stage",
        order: list[int] | None = None,
        rtx: bool = False,
        **engine: Any,
    ):
        self.plan = StagePlan.create(tiny_config(), [49, 98])
        self.records = records(self.plan, layout, order)
        self.engines: dict[str, FakeEngine] = {}
        self.graphs: list[GraphCache] = []

        def open_plan(rec: dict) -> SharedPlan:
            fake = FakeEngine(specs_of(self.plan, rec), **engine)
            fake.rtx = rtx
            self.engines[rec["file"]] = fake
            return SharedPlan(FAKE_RTX if rtx else FAKE_TRT, fake, rec["file"], CPU, FakeStreams())

        self.open_plan = open_plan

    def alter(self, name: str, change: Callable[[FakeEngine], None]) -> None:
        """Plan `name`'s fake engine goes through `change` when it is opened."""
        real = self.open_plan

        def altered(rec: dict) -> SharedPlan:
            shared = real(rec)
            if rec["name"] == name:
                change(shared.engine)
            return shared

        self.open_plan = altered

    def load(self, graphs: bool = False) -> EngineSet:
        """The engine set; `graphs`: stage engines replay CUDA graphs (use `fake_cuda`)."""
        factory = None
        if graphs:

            def factory() -> GraphCache:
                self.graphs.append(GraphCache(torch.device("cuda")))
                return self.graphs[-1]

        return trt_engine_set(self.plan, self.records, self.open_plan, CPU, factory)


ONE = {"B": 1}  # a stage graph's batch axis for one stream


def stream_buffers(spec: GraphSpec) -> dict[str, torch.Tensor]:
    """A stream's buffers for a stage (a batch of one): inputs of the spec's shapes and dtypes."""
    return {t.name: torch.zeros(t.concrete(ONE), dtype=dtype(t.dtype).torch) for t in spec.inputs}


def calls(fake: FakeEngine, context: int, name: str | None = None) -> list[tuple]:
    return [(c, a) for i, c, a in fake.log if i == context and name in (None, c)]


def run_in_threads(work: Callable[..., None], jobs: list[tuple]) -> None:
    """`work(*job)` for every job, each in its own thread, all at once; returns when all end."""
    threads = [threading.Thread(target=work, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@pytest.mark.parametrize("v2", [True, False])
def test_every_context_of_a_plan_runs_on_one_user_managed_buffer(v2: bool) -> None:
    loaded = Loaded(memory=12345, v2=v2)
    engines = loaded.load()
    for file, fake in loaded.engines.items():
        shared = next(p for p in engines.resources if p.file == file)
        assert shared.memory.numel() == 12345 and shared.memory.dtype == torch.uint8
        assert len(fake.contexts) == fake.num_optimization_profiles
        for ctx in fake.contexts:
            assert ctx.strategy == "USER_MANAGED"
            # TensorRT 10.1+ takes the size along; 10.0 only the address
            assert ctx.memory == (shared.memory.data_ptr(), 12345 if v2 else None)
    stage0 = loaded.engines["trt/stage0.plan"]
    assert len(stage0.contexts) == len(loaded.plan.buckets) == 3  # one plan, one per K


@pytest.mark.parametrize("layout", ["per-stage", "per-k"])
def test_each_k_runs_the_profile_the_manifest_records_for_it(layout: str) -> None:
    loaded = Loaded(layout, order=[98, 196, 49])  # profiles not in K order
    engines = loaded.load()
    for i in range(len(loaded.plan.stages)):
        for k in loaded.plan.buckets:
            engine = engines.stage(i, k)
            want = {"49": 2, "98": 0, "196": 1}[str(k)] if layout == "per-stage" else 0
            assert engine.context.active_optimization_profile == want
            assert engine.spec == loaded.plan.stage_spec(i, k)
            file = f"trt/stage{i}.plan" if layout == "per-stage" else f"trt/stage{i}_k{k}.plan"
            assert engine.plan.file == file
            # the context's reported shapes are its profile's: the wiring is consistent
            engine.run(stream_buffers(engine.spec))


def test_the_profile_is_selected_on_the_stream_before_any_shape() -> None:
    loaded = Loaded()
    engines = loaded.load()
    engine = engines.stage(0, 98)
    engine.run(stream_buffers(engine.spec))
    fake = loaded.engines["trt/stage0.plan"]
    ctx = fake.contexts[-1]  # the context of these buffers, created for them
    assert ctx is not engine.context
    mine = calls(fake, ctx.index)
    assert mine[0] == ("set_optimization_profile_async", (1, STREAM))  # K=98: profile 1
    assert [c for c, _ in mine].count("set_optimization_profile_async") == 1
    first_shape = next(n for n, (c, _) in enumerate(mine) if c == "set_input_shape")
    assert first_shape > 0
    assert dict(a for c, a in mine if c == "set_input_shape") == {
        t.name: t.concrete(ONE) for t in engine.spec.inputs
    }
    assert calls(fake, ctx.index, "execute_async_v3") == [("execute_async_v3", (STREAM,))]


def test_each_streams_buffers_get_a_context_bound_once() -> None:
    """Two streams on one (stage, K): a context each, bound once to the stream's buffers and
    to outputs of its own; running a stream again binds nothing."""
    loaded = Loaded()
    engine = loaded.load().stage(1, 49)
    fake = loaded.engines["trt/stage1.plan"]
    a, b = stream_buffers(engine.spec), stream_buffers(engine.spec)  # two streams

    out_a = engine.run(a)
    ctx_a = fake.contexts[-1]
    bound = {n: x.data_ptr() for n, x in (*a.items(), *out_a.items())}
    assert ctx_a.executed == [bound]  # inputs where the stream keeps them, outputs returned
    assert set(bound) == set(engine.spec.input_names) | set(engine.spec.output_names)
    out_b = engine.run(b)
    ctx_b = fake.contexts[-1]
    assert ctx_b is not ctx_a
    assert not set(map(torch.Tensor.data_ptr, out_b.values())) & set(bound.values())
    before = len(fake.log)
    for _ in range(3):
        assert engine.run(a) is out_a and engine.run(b) is out_b
    assert {c for _, c, _ in fake.log[before:]} == {"execute_async_v3"}  # nothing bound again
    assert ctx_a.executed == [bound] * 4
    for ctx in (ctx_a, ctx_b):  # shapes and addresses set once per context
        assert len(calls(fake, ctx.index, "set_input_shape")) == len(engine.spec.inputs)
        assert len(calls(fake, ctx.index, "set_tensor_address")) == len(bound)


def test_outputs_of_the_graphs_around_the_stages_are_new_on_every_run() -> None:
    """embed/head results outlive the next call (a stream keeps last frame's patches):
    they are the caller's, and feeds are converted as needed."""
    loaded = Loaded()
    embed = loaded.load().embed
    frame = torch.zeros(1, 3, 224, 224, dtype=torch.float64)  # converted to float32
    first, second = embed.run({"frame": frame}), embed.run({"frame": frame})
    assert first["patches"].data_ptr() != second["patches"].data_ptr()
    assert embed.context.executed[-1]["patches"] == second["patches"].data_ptr()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x: x.double(), "float64 tensor on cpu"),
        (lambda x: x.mT.contiguous().mT, "not contiguous"),
    ],
)
def test_a_stage_refuses_a_feed_it_would_have_to_copy(change, message: str) -> None:
    engine = Loaded().load().stage(0, 49)
    feeds = stream_buffers(engine.spec)
    feeds["k_cache_0"] = change(feeds["k_cache_0"])
    with pytest.raises(EngineError, match=rf"input 'k_cache_0' is a .*{message}.*in place"):
        engine.run(feeds)


@pytest.mark.parametrize(
    "call, message",
    [
        ("create_execution_context", r"trt/stage0\.plan: TensorRT cannot create an execution"),
        ("set_optimization_profile_async", r"cannot select optimization profile 0 \(K=49\)"),
        ("set_input_shape", r"stage0_k49: TensorRT refuses input 'tokens' of shape \(1, 49, 96\)"),
        ("set_tensor_address", r"TensorRT refuses the address of 'tokens'"),
        ("execute_async_v3", r"stage0_k49: TensorRT could not enqueue trt/stage0\.plan"),
    ],
)
def test_every_refusal_of_tensorrt_is_an_engine_error(call: str, message: str) -> None:
    loaded = Loaded()
    loaded.alter("stage0", lambda engine: setattr(engine, "fail", call))
    with pytest.raises(EngineError, match=message):
        engine = loaded.load().stage(0, 49)
        engine.run(stream_buffers(engine.spec))


def test_a_profile_switch_that_raises_is_an_engine_error() -> None:
    """TensorRT 10's Python binding raises where the C++ call returns false."""
    loaded = Loaded()
    loaded.alter("stage1", lambda engine: setattr(engine, "raise_profile", True))
    with pytest.raises(EngineError, match=r"trt/stage1\.plan: TensorRT cannot select .* profile"):
        loaded.load()


def test_output_shapes_come_from_the_context_and_must_be_the_manifests() -> None:
    loaded = Loaded()
    engine = loaded.load().stage(0, 98)
    loaded.engines["trt/stage0.plan"].shapes = {"attn_2": (1, 98, 195)}
    with pytest.raises(
        EngineError,
        match=r"stage0_k98: trt/stage0\.plan computes output 'attn_2' of shape \(1, 98, 195\), "
        r"the package's manifest declares \(1, 98, 196\)",
    ):
        engine.run(stream_buffers(engine.spec))


@pytest.mark.parametrize(
    "change, message",
    [
        ("dtype", r"tensors \{'out_map': 'float32'\}, the plan has \{'out_map': 'int64'\}"),
        ("name", r"tensors \{'out_map': 'float32'\}, the plan has \{'map': 'float32'\}"),
    ],
)
def test_a_plan_of_other_tensors_is_refused_at_load(change: str, message: str) -> None:
    loaded = Loaded()

    def other(engine: FakeEngine) -> None:
        if change == "dtype":
            engine.tensors["out_map"] = "int64"
        else:
            engine.tensors["map"] = engine.tensors.pop("out_map")

    loaded.alter("head", other)
    with pytest.raises(EngineError, match=rf"trt/head\.plan does not fit graph head: .*{message}"):
        loaded.load()


def test_two_threads_never_interleave_on_a_plans_contexts() -> None:
    """Pipeline streams share a plan's memory: binding and enqueueing of one run are one
    critical section per plan, whatever the other threads do."""
    loaded = Loaded()
    engines = loaded.load()
    fake = loaded.engines["trt/stage0.plan"]
    same_k = engines.stage(0, 49)
    jobs = [(same_k, stream_buffers(same_k.spec)) for _ in range(2)]
    other_k = engines.stage(0, 98)
    jobs.append((other_k, stream_buffers(other_k.spec)))
    errors: list[BaseException] = []

    def work(engine: TrtEngine, buffers: dict[str, torch.Tensor]) -> None:
        try:
            for _ in range(30):
                out = engine.run(buffers)
                assert out["tokens_out"].data_ptr() == buffers_out(fake, buffers)
                time.sleep(1e-4)  # outside the critical section: the others get their turn
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    run_in_threads(work, jobs)
    assert not errors
    assert fake.overlaps == 0
    runs = sorted(len(c.executed) for c in fake.contexts if c.executed)
    assert runs == [30, 30, 30]  # one context per stream's buffers


def buffers_out(fake: FakeEngine, buffers: dict[str, torch.Tensor]) -> int:
    """The tokens_out address bound beside `buffers` (their context's)."""
    ctx = next(
        c for c in fake.contexts if c.addresses.get("tokens") == buffers["tokens"].data_ptr()
    )
    return ctx.addresses["tokens_out"]


def test_each_captured_graph_has_its_own_context_and_no_context_changes_after_capture(
    fake_cuda,
) -> None:
    """Three streams on one (stage, K), graphs replayed: each graph was captured from one
    context, its own, bound to that stream's buffers, and nothing set a shape, an address,
    a profile or memory on a context after its capture. A context's first run is eager."""
    loaded = Loaded()
    engine = loaded.load(graphs=True).stage(0, 49)
    fake = loaded.engines["trt/stage0.plan"]
    streams = [stream_buffers(engine.spec) for _ in range(3)]
    outputs = []
    for step in range(5):
        outputs.append([engine.run(feeds) for feeds in streams])
        if step == 0:  # first runs: eager, each on a new context
            assert engine.graphs.captures == 0
            assert len(fake.contexts) == len(loaded.plan.buckets) + 3  # one per K at load
    assert engine.graphs.captures == 3 and len(engine.graphs) == 3
    graphs = [c.graph for c in engine.graphs._graphs.values()]
    pairs = [g.enqueued for g in graphs]
    assert all(len(p) == 1 for p in pairs)  # one context in each graph
    contexts = [p[0][0] for p in pairs]
    assert len({id(c) for c in contexts}) == 3 and engine.context not in contexts
    for ctx, feeds in zip(contexts, streams, strict=True):
        assert ctx.addresses["tokens"] == feeds["tokens"].data_ptr()
        assert ctx.executed[-1] == ctx.addresses  # replays run the captured bindings
    assert fake.after_capture == []
    for row in outputs[1:]:  # eager or replayed, a stream's outputs are its context's
        for o, first in zip(row, outputs[0], strict=True):
            assert all(o[n] is first[n] for n in first)
    assert loaded.load().embed.graphs is None  # graphs only for a stream's static buffers


def test_a_dropped_context_takes_its_graph_along(fake_cuda) -> None:
    loaded = Loaded()
    engine = loaded.load(graphs=True).stage(0, 49)
    engine.max_bound = 2
    fake = loaded.engines["trt/stage0.plan"]
    streams = [stream_buffers(engine.spec) for _ in range(3)]
    for _ in range(3):
        for feeds in streams[:2]:
            engine.run(feeds)
    assert engine.graphs.captures == 2
    engine.run(streams[2])  # a third set: the least recently used context goes, with its graph
    assert len(engine.graphs) == 1 and len(engine._bound) == 2
    for _ in range(3):
        for feeds in streams:
            engine.run(feeds)
    assert fake.after_capture == []


def test_rtx_contexts_specialise_eagerly_and_capture_only_when_capturable(fake_cuda) -> None:
    loaded = Loaded(rtx=True)
    engine = loaded.load(graphs=True).stage(0, 49)
    fake = loaded.engines["trt/stage0.plan"]
    assert {ctx.strategy for ctx in fake.contexts} == {("USER_MANAGED", "EAGER")}
    feeds = stream_buffers(engine.spec)
    for _ in range(3):
        engine.run(feeds)
    ctx = fake.contexts[-1]
    assert calls(fake, ctx.index, "is_stream_capturable") == [
        ("is_stream_capturable", (FakeCudaStream.cuda_stream,))
    ]
    assert engine.graphs.captures == 1
    fake.capturable = False  # a context that says no runs eagerly, for good
    other = stream_buffers(engine.spec)
    for _ in range(4):
        engine.run(other)
    assert engine.graphs.captures == 1 and len(fake.contexts[-1].executed) == 4


def test_streams_in_threads_capture_one_at_a_time_in_thread_local_mode(fake_cuda) -> None:
    """Four streams, each in its thread, on two plans: every capture in thread-local mode,
    never two at once, no error, and every stream's buffers captured once."""
    loaded = Loaded()
    engines = loaded.load(graphs=True)
    jobs = []
    for engine in (engines.stage(0, 49), engines.stage(1, 98)):
        jobs += [(engine, stream_buffers(engine.spec)) for _ in range(2)]
    errors: list[BaseException] = []

    def work(engine: TrtEngine, buffers: dict[str, torch.Tensor]) -> None:
        try:
            for _ in range(10):
                engine.run(buffers)
        except BaseException as e:
            errors.append(e)

    run_in_threads(work, jobs)
    assert not errors
    assert FakeCapture.modes == ["thread_local"] * 4 and FakeCapture.overlaps == 0
    assert sum(g.captures for g in loaded.graphs) == 4
    assert all(fake.after_capture == [] for fake in loaded.engines.values())


def test_warmup_runs_every_engine_once_then_runs_bind_their_own_buffers() -> None:
    loaded = Loaded()
    engines = loaded.load()
    warmup(engines)
    for fake in loaded.engines.values():
        for ctx in fake.contexts:
            assert len(ctx.executed) == 1
            spec = fake.specs[ctx.active_optimization_profile]
            assert ctx.input_shapes == {t.name: t.concrete(ONE) for t in spec.inputs}
    engine = engines.stage(0, 49)
    feeds = stream_buffers(engine.spec)
    out = engine.run(feeds)
    ctx = loaded.engines["trt/stage0.plan"].contexts[-1]
    assert ctx.executed == [{n: x.data_ptr() for n, x in (*feeds.items(), *out.items())}]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_streams_keep_tensorrt_off_the_default_stream_and_in_the_capture() -> None:
    """What a context enqueues on goes by `CudaStreams.handle()`: the caller's stream, the
    side stream in place of the default one (ordered both ways), or, inside a CUDA graph
    capture, the capturing stream. A stand-in for execute_async_v3 enqueues torch work on
    that handle."""
    from rgtp.engines.cuda_graphs import GraphCache
    from rgtp.engines.trt_context import CudaStreams

    device = torch.device("cuda")
    side = torch.cuda.Stream(device)
    streams = CudaStreams(device, side)
    x = torch.randn(1 << 22, device=device)
    y = torch.empty_like(x)

    def execute(inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.cuda.stream(torch.cuda.ExternalStream(streams.handle(), device)):
            torch.mul(inputs["x"], 2, out=y)
        return {"y": y}

    with streams.ordered():  # from the default stream
        assert streams.handle() == side.cuda_stream
        execute({"x": x})
    assert torch.equal(y + 1, x * 2 + 1)  # the default stream waited for the side stream

    user = torch.cuda.Stream(device)
    with torch.cuda.stream(user), streams.ordered():
        assert streams.handle() == user.cuda_stream
    graphs = GraphCache(device)
    for step in range(3):  # warm-up, capture, replay
        x.fill_(step)
        with streams.ordered():
            out = graphs.run({"x": x}, execute)
        assert torch.equal(out["y"], torch.full_like(x, 2 * step)), step
    assert graphs.captures == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_streams_capture_in_threads_while_others_enqueue_and_allocate() -> None:
    """On a GPU: four threads, each on its own CUDA stream with its own GraphCache, warm up,
    capture and replay while four others keep allocating and enqueueing; no capture fails
    (in the global capture mode, another thread's allocation would break a capture)."""
    from rgtp.engines.cuda_graphs import GraphCache

    device = torch.device("cuda")
    stop = threading.Event()
    errors: list[BaseException] = []

    def busy() -> None:
        with torch.cuda.stream(torch.cuda.Stream(device)):
            while not stop.is_set():
                x = torch.randn(1 << 16, device=device)  # a new allocation every time
                (x * 2).sum()

    def stream(seed: int) -> None:
        try:
            cache = GraphCache(device)
            x = torch.full((1 << 16,), float(seed), device=device)
            with torch.cuda.stream(torch.cuda.Stream(device)):
                for step in range(20):
                    x.fill_(seed + step)
                    out = cache.run({"x": x}, lambda f: {"y": f["x"] * 2 + 1})
                    assert torch.equal(out["y"], torch.full_like(x, 2 * (seed + step) + 1))
            assert cache.captures == 1
        except BaseException as e:
            errors.append(e)

    noise = [threading.Thread(target=busy) for _ in range(4)]
    workers = [threading.Thread(target=stream, args=(i,)) for i in range(4)]
    for t in noise + workers:
        t.start()
    for t in workers:
        t.join()
    stop.set()
    for t in noise:
        t.join()
    assert not errors, errors
