"""Tracing a package's graphs on several cores at once.

Tracing a graph (torch.export, then the ONNX exporter and its optimiser) is single-threaded
Python, seconds to a minute a graph, and a package traces its embed and head graphs and each
stage once (its graphs at every K bucket are derived from that trace, `onnx_graphs.fix_k`,
as the parent writes them). On Linux the graphs are traced by forked worker processes,
which see the model as the parent has it (copy-on-write, nothing pickled) and hand each
graph back as an ONNX file with external data; the parent writes the package from them in
order, as a sequential export would. Where forking is unsafe or unavailable (CUDA
initialised in this process, OpenVINO loaded in it, no "fork" start method) or one core is
all there is, the graphs are traced here, one by one.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TypeVar

import onnx
import torch

from rgtp.export.onnx_graphs import ExportError

T = TypeVar("T")

# What the forked workers trace: set before the pool forks, read in the children.
_JOBS: tuple[Sequence[object], Callable[[object], onnx.ModelProto]] | None = None


def export_workers(jobs: int, requested: int | None = None) -> int:
    """How many processes trace `jobs` graphs: `requested`, else one per core this process
    may run on; 1 where forking is unsafe (`fork_unsafe`) or unavailable."""
    if requested is not None and requested < 1:
        raise ValueError(f"export workers must be at least 1, got {requested}")
    if "fork" not in multiprocessing.get_all_start_methods() or fork_unsafe():
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(jobs, requested or cores or 1))


def fork_unsafe() -> str | None:
    """Why a forked worker could not run here, or None. CUDA does not survive a fork.
    Nor does OpenVINO's CPU plugin once it has compiled models (its TBB thread pool is not
    fork-safe): after the suite's OpenVINO tests, forked tracing workers hung and once the
    whole process crashed (2026-12-07)."""
    if torch.cuda.is_initialized():
        return "CUDA is initialised in this process"
    openvino = sys.modules.get("rgtp.engines.openvino_backend")
    if openvino is not None and openvino.engines_created():
        return "OpenVINO engines were created in this process"
    return None


def traced(
    jobs: Sequence[T],
    trace: Callable[[T], onnx.ModelProto],
    workers: int,
    scratch: Path,
) -> Iterator[tuple[T, onnx.ModelProto]]:
    """`(job, trace(job))` for every job, in order. With `workers` > 1, forked processes
    trace ahead while the caller writes; their files go under `scratch` and are removed.
    Close the iterator (`contextlib.closing`) to stop the workers early."""
    if workers <= 1:
        for job in jobs:
            yield job, trace(job)
        return
    global _JOBS
    _JOBS = (jobs, trace)  # type: ignore[assignment]
    context = multiprocessing.get_context("fork")
    with (
        tempfile.TemporaryDirectory(dir=scratch, prefix=".trace-") as tmp,
        ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init) as pool,
    ):
        # A worker must never free what it inherits: an ONNX Runtime session's destructor
        # waits on its thread pool, whose threads a fork does not copy (a worker hung so).
        # Frozen objects are never collected, in the parent until the fork is done, and
        # in the workers for good.
        # SIGTERM and Ctrl-C wait until the workers are forked and the pool knows them all:
        # a worker forked but not yet in the pool's table is never stopped and waits for
        # work for good once its parent is gone (1 run in 6 of tests/test_package_trust.py's
        # SIGTERM test left one). Blocking the signals holds them only in this thread, and
        # Python runs its handlers here whichever thread the kernel gave them to, so their
        # handlers are deferred as well; a deferred signal is raised once the pool is made,
        # inside the guard below, which stops the workers.
        stop = (signal.SIGTERM, signal.SIGINT)
        try:
            gc.freeze()
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, stop)
            with _deferred(stop) as deferred:
                try:
                    futures = [pool.submit(_trace_to_file, i, tmp) for i in range(len(jobs))]
                finally:
                    gc.unfreeze()
                    _JOBS = None  # forked at the first submission: the workers have their copy
                    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            for signum in deferred:
                signal.raise_signal(signum)  # its own handler, now
            for job, future in zip(jobs, futures, strict=True):
                try:
                    path = Path(future.result())
                except BrokenProcessPool as e:
                    raise ExportError(
                        "a process tracing graphs died (killed, or out of memory?); export "
                        "again with fewer workers (workers=1, `rgtp export --workers 1`)"
                    ) from e
                graph = onnx.load(str(path))  # with its external data
                for file in path.parent.glob(f"{path.stem}.*"):
                    file.unlink()
                yield job, graph
        except BaseException:
            # stopped (an error, SIGTERM, Ctrl-C, the caller closing): the workers' current
            # graphs are not waited for
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _deferred(signals: Sequence[int]) -> Iterator[list[int]]:
    """Within: `signals` are recorded (in the list it gives) instead of handled; their
    handlers are back on exit. Only the main thread may set handlers: elsewhere, nothing
    is deferred (the signals are handled there as before)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in signals}
    try:
        yield received
    finally:
        for s, handler in previous.items():  # None: a handler not set from Python
            signal.signal(s, signal.SIG_DFL if handler is None else handler)


def _worker_init() -> None:
    # The parent's SIGTERM handler cleans up its export; a worker is stopped by its parent
    # (the pool) and must not run it. Ctrl-C reaches the parent, which stops the pool.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    torch.set_num_threads(1)  # one core each: the workers are the parallelism


def _trace_to_file(index: int, directory: str) -> str:
    assert _JOBS is not None, "a worker sees the jobs its parent set before forking"
    jobs, trace = _JOBS
    graph = trace(jobs[index])
    path = Path(directory) / f"graph{index}.onnx"
    onnx.save(graph, str(path), save_as_external_data=True, location=f"graph{index}.data")
    return str(path)
