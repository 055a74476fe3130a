"""CUDA graphs of an engine, one per set of input buffers: shared by every backend that runs
on CUDA (PyTorch, TensorRT).

A graph replays kernels on fixed addresses. rgtp's streams own their buffers (caches of all
tokens, and per K bucket the gathered tokens and their row indices), so a stage called by a
stream with bucket K always reads the same addresses: the graph of (stage, K, stream) is
captured once and replayed on every later call with no copy of its inputs. The first call
at a new shape runs eagerly (the warm-up that initialises libraries and grows the allocator
outside any capture); buffers at a shape already warmed up are captured at once (another
stream, or the next stage fed by a captured one).

A graph is replayed only when the caller passes tensors at its addresses, so they are live
memory then: the graph need not hold its inputs. Outputs are the graph's own tensors, which
a replay overwrites: valid until the same engine runs again on the same input buffers,
which for a stream is its next step. Graphs suit long-lived streams: each new stream costs
a capture per (stage, K).

Streams step in threads of their own, so one captures while others enqueue and allocate.
A capture runs in CUDA's thread-local mode (only this thread's unsafe calls break it, not
another thread's work) and one at a time in the process (`CAPTURE_LOCK`): two captures at
once would each see the other's allocations.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass

import torch

Forward = Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]
# whether work queued on a CUDA stream (its handle) can be captured: TensorRT-RTX contexts
# say so (`is_stream_capturable`); those that cannot run eagerly
Capturable = Callable[[int], bool]
CAPTURE_LOCK = threading.Lock()  # one capture at a time in the process
_capture_streams: dict[torch.device, torch.cuda.Stream] = {}
_streams_lock = threading.Lock()


def capture_stream(device: torch.device) -> torch.cuda.Stream:
    """The stream every capture on `device` runs on (captures run one at a time)."""
    with _streams_lock:
        if device not in _capture_streams:
            _capture_streams[device] = torch.cuda.Stream(device)
        return _capture_streams[device]


def shape_key(inputs: Mapping[str, torch.Tensor]) -> tuple:
    """Every input's name, shape and dtype."""
    return tuple((n, tuple(t.shape), t.dtype) for n, t in inputs.items())


def buffer_key(inputs: Mapping[str, torch.Tensor]) -> tuple:
    """What a graph is specialised to: `shape_key` and every input's address."""
    return (*shape_key(inputs), *(t.data_ptr() for t in inputs.values()))


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    outputs: dict[str, torch.Tensor]  # in the graph's memory pool


class GraphCache:
    """Captured graphs of one engine keyed by `buffer_key`, least recently used dropped
    beyond `max_graphs` (each holds the memory of its intermediates and outputs).

    warmup: eager runs at a new `shape_key` before buffers of that shape are captured.
    """

    def __init__(self, device: torch.device, warmup: int = 1, max_graphs: int = 64) -> None:
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {device}")
        self.device = device
        self.warmup = warmup
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[tuple, _Captured] = OrderedDict()
        self._warm: OrderedDict[tuple, int] = OrderedDict()  # eager runs per shape_key
        # shapes whose capture failed, keys of buffers whose engine cannot be captured
        self._uncapturable: set[tuple] = set()
        self.captures = 0
        self.eager_runs = 0

    def __len__(self) -> int:
        return len(self._graphs)

    def run(
        self,
        inputs: Mapping[str, torch.Tensor],
        forward: Forward,
        setting: Hashable = None,
        capturable: Capturable | None = None,
    ) -> dict[str, torch.Tensor]:
        """`forward(inputs)` through the graph of these buffers: replayed if captured,
        otherwise run eagerly (warm-up) or captured now. `setting`: what else `forward`
        depends on that the inputs do not show (e.g. the K of a top-K). `capturable`: asked
        about the capture stream before a capture; False runs these buffers eagerly."""
        return self._run((buffer_key(inputs), setting), inputs, forward, setting, capturable)

    def prepare(
        self, inputs: Mapping[str, torch.Tensor], forward: Forward, setting: Hashable = None
    ) -> Callable[[], dict[str, torch.Tensor]]:
        """`run(inputs, forward, setting)` made ready: the graph's key is taken now, so that
        the call does no more than replay it on what the input buffers hold then."""
        key = (buffer_key(inputs), setting)
        captured = self._graphs.get(key)
        if captured is None:
            return lambda: self._run(key, inputs, forward, setting)
        self._graphs.move_to_end(key)

        def replay() -> dict[str, torch.Tensor]:
            captured.graph.replay()
            return dict(captured.outputs)

        return replay

    def _run(
        self,
        key: tuple,
        inputs: Mapping[str, torch.Tensor],
        forward: Forward,
        setting: Hashable,
        capturable: Capturable | None = None,
    ) -> dict[str, torch.Tensor]:
        captured = self._graphs.get(key)
        if captured is None:
            shape = (shape_key(inputs), setting)
            runs = self._warm.pop(shape, 0)
            self._remember(self._warm, shape, min(runs + 1, self.warmup))
            if runs < self.warmup or shape in self._uncapturable or key in self._uncapturable:
                self.eager_runs += 1
                return forward(inputs)
            if capturable is not None and not capturable(capture_stream(self.device).cuda_stream):
                self._uncapturable.add(key)  # these buffers' engine cannot be captured
                self.eager_runs += 1
                return forward(inputs)
            try:
                captured = self._capture(inputs, forward)
            except RuntimeError as e:  # e.g. a host sync inside: that shape stays eager
                warnings.warn(f"running eagerly, no CUDA graph: {e}", stacklevel=2)
                self._uncapturable.add(shape)
                self.eager_runs += 1
                return forward(inputs)
            self._remember(self._graphs, key, captured)
        else:
            self._graphs.move_to_end(key)
        captured.graph.replay()
        return dict(captured.outputs)  # the caller's dict: popping from it keeps the graph's

    def _capture(self, inputs: Mapping[str, torch.Tensor], forward: Forward) -> _Captured:
        """`forward` captured on this cache's capture stream (`torch.cuda.graph`
        synchronises the device first: work queued before is done)."""
        graph = torch.cuda.CUDAGraph()
        stream = capture_stream(self.device)
        with (
            CAPTURE_LOCK,
            torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"),
        ):
            outputs = forward(inputs)
        self.captures += 1
        return _Captured(graph, outputs)

    def forget(self, inputs_key: tuple, setting: Hashable = None) -> None:
        """Drop the graph of the buffers whose `buffer_key` is `inputs_key` (its engine
        drops what the graph replays, e.g. a TensorRT execution context)."""
        self._graphs.pop((inputs_key, setting), None)
        self._uncapturable.discard((inputs_key, setting))

    def _remember(self, table: OrderedDict, key: tuple, value: object) -> None:
        table[key] = value
        while len(table) > self.max_graphs:
            table.popitem(last=False)

    def clear(self) -> None:
        """Drop every graph (and the memory it holds)."""
        self._graphs.clear()
        self._warm.clear()
