"""TensorRT execution contexts behind the engine protocol: profiles, shared activation
memory, bindings by address, and the order of their work on CUDA streams.

A deserialized plan (`SharedPlan`) has many execution contexts: one per set of a stream's
buffers for each K bucket (its optimization profile), so that every CUDA graph is captured
from a context of its own that nothing changes afterwards, as NVIDIA's CUDA graph
guidance asks. Every context of a plan is created with user-managed memory and handed the
plan's one buffer, sized for its largest profile: each context would otherwise reserve that
much for itself. Contexts that share memory must never run at once, and every stream of a
pipeline shares them, so a plan's work runs under one lock and, on the GPU, after its
previous run on whatever CUDA stream that was (`CudaStreams`).

Written against the TensorRT 10 Python API (TensorRT-RTX has the same calls).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from rgtp.engines.base import EngineError
from rgtp.engines.binding import input_buffers
from rgtp.engines.cuda_graphs import GraphCache, buffer_key
from rgtp.engines.dtypes import dtype
from rgtp.package.plan import BATCH, GraphSpec

# TensorRT's DataType names as a manifest names dtypes
_TRT_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT64": "int64",
    "INT32": "int32",
    "INT8": "int8",
    "UINT8": "uint8",
    "BOOL": "bool",
}


class Streams(Protocol):
    """Where a plan's TensorRT calls put their work (`CudaStreams` on a GPU)."""

    def ordered(self) -> AbstractContextManager[None]:
        """Around one run of the plan: its work is ordered after the plan's previous run
        and before what the caller queues next."""
        ...

    def handle(self) -> int:
        """The CUDA stream to enqueue on now (the current one: inside a CUDA graph capture,
        the capturing stream)."""
        ...


class CudaStreams:
    """The stream order of one plan's work: torch's current stream of the device, after the
    plan's previous run (its contexts share one activation memory, and every pipeline
    stream shares its contexts, perhaps from other threads on other CUDA streams).

    TensorRT synchronises the host around work enqueued on the default stream (handle 0),
    where torch queues unless told otherwise; that work goes to `side` instead, which
    waits for the default stream before and makes it wait after: the caller sees the same
    order as if it had run there, without a host synchronisation.
    """

    def __init__(self, device: torch.device, side: torch.cuda.Stream) -> None:
        self.device, self.side = device, side
        self._done = torch.cuda.Event()  # the plan's last run; never recorded: no wait

    def handle(self) -> int:
        return torch.cuda.current_stream(self.device).cuda_stream

    @contextmanager
    def ordered(self) -> Iterator[None]:
        with torch.cuda.device(self.device):
            current = torch.cuda.current_stream(self.device)
            work = self.side if current.cuda_stream == 0 else current
            if work != current:
                work.wait_stream(current)
            work.wait_event(self._done)
            try:
                with torch.cuda.stream(work):
                    yield
            finally:
                self._done.record(work)
                if work != current:
                    current.wait_stream(work)


def device_memory_size(engine: Any) -> int:
    """Bytes of activation memory a context of `engine` needs in its largest profile
    (TensorRT 10.1 names it `device_memory_size_v2`, 10.0 `device_memory_size`)."""
    size = getattr(engine, "device_memory_size_v2", None)
    return int(engine.device_memory_size if size is None else size)


def give_memory(context: Any, memory: torch.Tensor) -> None:
    """Hand `memory` to a context created with user-managed memory (TensorRT 10.1 takes
    address and size, `set_device_memory`; 10.0 the address, `device_memory`)."""
    if hasattr(context, "set_device_memory"):
        context.set_device_memory(memory.data_ptr(), memory.numel())
    else:
        context.device_memory = memory.data_ptr()


def check_interface(engine: Any, spec: GraphSpec, file: str) -> None:
    """EngineError unless the plan's I/O tensors have the names and dtypes of `spec`: a
    plan of other graphs would read and write the bound buffers as other tensors."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    got = {}
    for n in names:
        kind = engine.get_tensor_dtype(n).name
        got[n] = _TRT_DTYPES.get(kind, kind.lower())
    want = {t.name: t.dtype for t in (*spec.inputs, *spec.outputs)}
    if got != want:
        plan_only = {n: d for n, d in got.items() if want.get(n) != d}
        graph_only = {n: d for n, d in want.items() if got.get(n) != d}
        raise EngineError(
            f"{file} does not fit graph {spec.name}: where the package's manifest declares "
            f"tensors {graph_only}, the plan has {plan_only}; rebuild the plans with "
            "`rgtp build --backend trt`"
        )


class SharedPlan:
    """A deserialized plan and what all its contexts share: one activation memory buffer
    (uint8, `device_memory_size` bytes) and one lock with one stream order (`exclusive`).

    trt: the TensorRT module (allocation strategy, TensorRT-RTX's runtime configuration);
    file: the plan's file, for messages; streams: `CudaStreams` on a GPU.
    """

    def __init__(
        self, trt: Any, engine: Any, file: str, device: torch.device, streams: Streams
    ) -> None:
        self.trt, self.engine, self.file, self.streams = trt, engine, file, streams
        self.memory = torch.empty(device_memory_size(engine), dtype=torch.uint8, device=device)
        # re-entrant: a run creates the context of new buffers inside its critical section
        self._lock = threading.RLock()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """One run on the plan at a time: its contexts share one activation memory."""
        with self._lock, self.streams.ordered():
            yield

    def context(self, profile: int, label: str) -> Any:
        """A new execution context on the shared memory, switched to `profile` (`label`
        says which K it serves, for messages). TensorRT-RTX contexts specialise their
        dynamic-shape kernels eagerly: a lazily specialised context would run fallback
        kernels first, and a CUDA graph captured then would keep them."""
        context = self.engine.create_execution_context(self._runtime_config())
        if context is None:
            raise EngineError(
                f"{self.file}: TensorRT cannot create an execution context (its log says why)"
            )
        give_memory(context, self.memory)
        with self.exclusive():
            try:
                ok = context.set_optimization_profile_async(profile, self.streams.handle())
            except RuntimeError:  # TensorRT 10's binding raises where the C++ call fails
                ok = False
        if not ok:
            raise EngineError(
                f"{self.file}: TensorRT cannot select optimization profile {profile} ({label}); "
                f"the plan has {self.engine.num_optimization_profiles}: rebuild the plans"
            )
        return context

    def _runtime_config(self) -> Any:
        """What `create_execution_context` takes: user-managed memory (TensorRT's allocation
        strategy), or TensorRT-RTX's runtime configuration saying so, with eager kernel
        specialisation."""
        trt = self.trt
        user_managed = trt.ExecutionContextAllocationStrategy.USER_MANAGED
        eager = getattr(trt, "DynamicShapesKernelSpecializationStrategy", None)
        if eager is None:
            return user_managed
        config = self.engine.create_runtime_config()
        config.set_execution_context_allocation_strategy(user_managed)
        config.dynamic_shapes_kernel_specialization_strategy = eager.EAGER
        return config


@dataclass
class _Bound:
    """A stream's buffers bound to a context of their own, once: the outputs it writes."""

    context: Any
    outputs: dict[str, torch.Tensor]


class TrtEngine:
    """A graph on one profile of a plan (one K) behind the engine protocol; TensorRT reads
    and writes torch tensors in place, by address.

    static (the stage engines): a stream feeds its own buffers, at the same addresses on
    every step. Each set of input buffers gets an execution context of its own, with its
    input shapes set, its outputs allocated and every address bound once, never changed
    after: a CUDA graph replays what its context was at capture, and TensorRT leaves a
    context changed after capture undefined. Its first run is eager (TensorRT's lazy work
    after a shape is set); with `graphs` (`engines.cuda_graphs`) later runs replay one
    CUDA graph per set, captured only from its own context (TensorRT-RTX: only if the
    context says it is capturable). The outputs are the engine's own, valid until it runs
    again on the same inputs. Inputs must be of the spec's dtypes, on the device and
    contiguous: a converted copy is a buffer nobody would keep. At most `max_bound` sets
    keep their context (least recently used dropped, with its graph).
    Otherwise (embed, head, ...): one context, never captured; feeds are converted where
    needed and every run binds new outputs, which the caller owns.
    """

    def __init__(
        self,
        spec: GraphSpec,
        plan: SharedPlan,
        profile: int,
        label: str,
        device: torch.device,
        static: bool = False,
        graphs: GraphCache | None = None,
        max_bound: int = 64,
    ) -> None:
        self.spec, self.plan, self.device = spec, plan, device
        self.profile, self.label = profile, label
        self.static, self.graphs, self.max_bound = static, graphs, max_bound
        # the context of warm-up and of the graphs around the stages, rebound on every run
        self.context = plan.context(profile, label)
        self._bound: OrderedDict[tuple, _Bound] = OrderedDict()

    def run(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        inputs = input_buffers(self.spec, feeds, self.device)
        if not self.static:
            with self.plan.exclusive():
                outputs = self._new_outputs(inputs)
                self._bind(self.context, inputs, outputs)
                self._execute(self.context)
                return outputs
        self._check_in_place(feeds, inputs)
        with self.plan.exclusive():
            bound, fresh = self._bound_to(inputs)
            if self.graphs is None or fresh:
                self._execute(bound.context)
                return bound.outputs
            return self.graphs.run(
                inputs, lambda _: self._replayable(bound), capturable=self._capturable(bound)
            )

    def warmup(self) -> None:
        """One run on zeros of the spec's shapes, its outputs dropped: TensorRT's lazy
        initialisation (TensorRT-RTX compiles kernels) happens here, not in a frame."""
        one = {BATCH: 1}  # a stage graph's batch: one stream
        inputs = {
            t.name: torch.zeros(t.concrete(one), dtype=dtype(t.dtype).torch, device=self.device)
            for t in self.spec.inputs
        }
        with self.plan.exclusive():
            self._bind(self.context, inputs, self._new_outputs(inputs))
            self._execute(self.context)

    def _check_in_place(
        self, feeds: Mapping[str, torch.Tensor], inputs: Mapping[str, torch.Tensor]
    ) -> None:
        for t in self.spec.inputs:
            if inputs[t.name] is not feeds[t.name]:
                x = feeds[t.name]
                raise EngineError(
                    f"{self.spec.name}: input {t.name!r} is a {x.dtype} tensor on {x.device}"
                    f"{'' if x.is_contiguous() else ', not contiguous'}; this engine reads its "
                    f"inputs in place: pass a contiguous {t.dtype} tensor on {self.device}"
                )

    def _bound_to(self, inputs: Mapping[str, torch.Tensor]) -> tuple[_Bound, bool]:
        """The context of these buffers, and whether it is new (created and bound now)."""
        key = buffer_key(inputs)
        bound = self._bound.get(key)
        if bound is not None:
            self._bound.move_to_end(key)
            return bound, False
        bound = _Bound(self.plan.context(self.profile, self.label), self._new_outputs(inputs))
        self._bind(bound.context, inputs, bound.outputs)
        self._bound[key] = bound
        while len(self._bound) > self.max_bound:
            old, _ = self._bound.popitem(last=False)
            if self.graphs is not None:
                self.graphs.forget(old)  # its graph replays the context dropped here
        return bound, True

    def _replayable(self, bound: _Bound) -> dict[str, torch.Tensor]:
        """What a CUDA graph of these buffers captures: their context's enqueue alone."""
        self._execute(bound.context)
        return bound.outputs

    @staticmethod
    def _capturable(bound: _Bound) -> Callable[[int], bool] | None:
        check = getattr(bound.context, "is_stream_capturable", None)  # TensorRT-RTX
        return None if check is None else lambda stream: bool(check(stream))

    def _new_outputs(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        dims = self.spec.symbolic_dims({n: x.shape for n, x in inputs.items()})
        return {
            t.name: torch.empty(t.concrete(dims), dtype=dtype(t.dtype).torch, device=self.device)
            for t in self.spec.outputs
        }

    def _bind(
        self, ctx: Any, inputs: Mapping[str, torch.Tensor], outputs: Mapping[str, torch.Tensor]
    ) -> None:
        """Input shapes, then every tensor's address; the output shapes TensorRT infers
        must be those of `outputs` (the manifest's)."""
        name = self.spec.name
        for n, x in inputs.items():
            if not ctx.set_input_shape(n, tuple(x.shape)):
                raise EngineError(
                    f"{name}: TensorRT refuses input {n!r} of shape {tuple(x.shape)} in "
                    f"optimization profile {ctx.active_optimization_profile} of "
                    f"{self.plan.file}; rebuild the plans"
                )
        for n, y in outputs.items():
            got = tuple(int(d) for d in ctx.get_tensor_shape(n))
            if got != tuple(y.shape):
                raise EngineError(
                    f"{name}: {self.plan.file} computes output {n!r} of shape {got}, the "
                    f"package's manifest declares {tuple(y.shape)} for these inputs; "
                    "rebuild the plans with `rgtp build --backend trt`"
                )
        for n, x in (*inputs.items(), *outputs.items()):
            if not ctx.set_tensor_address(n, x.data_ptr()):
                raise EngineError(
                    f"{name}: TensorRT refuses the address of {n!r} ({x.dtype} on {x.device}) "
                    f"for {self.plan.file}: not a tensor of the plan, or a misaligned buffer"
                )

    def _execute(self, ctx: Any) -> None:
        if not ctx.execute_async_v3(self.plan.streams.handle()):
            raise EngineError(
                f"{self.spec.name}: TensorRT could not enqueue {self.plan.file} (its log says why)"
            )
