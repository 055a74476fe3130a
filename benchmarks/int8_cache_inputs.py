"""What holding the key/value caches in int8 between stage calls would save: a stage graph's
cache inputs rewritten to int8 with a `DequantizeLinear` in front (nothing else changed),
timed interleaved against the graph as exported, on OpenVINO.

    python benchmarks/int8_cache_inputs.py out/bench/vitdet-b-672-v3-int8-qdq/stage1_k64.onnx \
        out/bench/vitdet-b-672-v3-int8-qdq/stage1_k512.onnx --reps 11 --threads 2 \
        --json benchmarks/results/int8-cache-inputs-2026-12-07.json

Timing only: the caches are random int8 at one fixed scale, so the outputs mean nothing. A
runtime that held its caches in int8 would also have the graph quantize the fresh rows it
returns, with the scale static int8 calibrated for the caches' consumers; none of that is
built (docs/precision.md, "Four levers measured").
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from stage_profile import feeds_for


def with_int8_caches(src: Path, dst: Path, scale: float = 0.02) -> None:
    """`src` with every `*_cache_*` input int8, dequantized at `scale` before its first use."""
    model = onnx.load(str(src))  # with its external data
    graph = model.graph
    inputs, dequantize = [], []
    for value in graph.input:
        if "_cache_" not in value.name:
            inputs.append(value)
            continue
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        quantized = value.name + "_int8"
        inputs.append(helper.make_tensor_value_info(quantized, TensorProto.INT8, dims))
        s = numpy_helper.from_array(np.array(scale, np.float32), value.name + "_scale")
        z = numpy_helper.from_array(np.array(0, np.int8), value.name + "_zero")
        graph.initializer.extend([s, z])
        dequantize.append(
            helper.make_node("DequantizeLinear", [quantized, s.name, z.name], [value.name])
        )
    del graph.input[:]
    graph.input.extend(inputs)
    nodes = [*dequantize, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(dst), save_as_external_data=True, location=dst.name + ".data")


def int8_feeds(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`feeds` of a stage graph (`stage_profile.feeds_for`) for its `with_int8_caches`
    rewrite: the caches as random int8 under their new names, the rest as they are."""
    rng = np.random.default_rng(0)
    out = {}
    for name, x in feeds.items():
        if "_cache_" in name:
            out[f"{name}_int8"] = rng.integers(-60, 60, x.shape).astype(np.int8)
        else:
            out[name] = x
    return out


def compiled(core, path: Path, feeds: dict[str, np.ndarray], threads: int):
    """An infer request of the graph at `path`, compiled for the shapes of `feeds`."""
    model = core.read_model(str(path))
    model.reshape({i.get_any_name(): feeds[i.get_any_name()].shape for i in model.inputs})
    config = {"INFERENCE_NUM_THREADS": threads}
    return core.compile_model(model, "CPU", config).create_infer_request()


def main() -> None:
    import openvino as ov

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("graphs", nargs="+", type=Path, help="stage graphs (ONNX)")
    p.add_argument("--reps", type=int, default=11)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    core = ov.Core()
    scratch = Path(tempfile.mkdtemp(prefix="int8-caches-"))
    runs = []
    for graph in args.graphs:
        int8 = scratch / f"{graph.stem}_int8_caches.onnx"
        with_int8_caches(graph, int8)
        feeds = feeds_for(graph)
        for label, path, f in (
            ("float32 caches", graph, feeds),
            ("int8 caches", int8, int8_feeds(feeds)),
        ):
            request = compiled(core, path, f, args.threads)
            for _ in range(3):  # warm-up
                request.infer(f)
            runs.append((graph.name, label, request, f))
    wall: dict[tuple[str, str], list[float]] = {(g, lab): [] for g, lab, _, _ in runs}
    cpu: dict[tuple[str, str], list[float]] = {(g, lab): [] for g, lab, _, _ in runs}
    for _ in range(args.reps):  # interleaved: load falls on every graph alike
        for graph, label, request, feeds in runs:
            c0, t0 = time.process_time(), time.perf_counter()
            request.infer(feeds)
            wall[graph, label].append(1e3 * (time.perf_counter() - t0))
            cpu[graph, label].append(1e3 * (time.process_time() - c0))
    rows = []
    for graph, label in wall:
        row = {
            "graph": graph,
            "caches": label,
            "wall_ms": statistics.median(wall[graph, label]),
            "cpu_ms": statistics.median(cpu[graph, label]),
        }
        rows.append(row)
        print(f"{graph:24s} {label:15s} wall {row['wall_ms']:7.2f} ms  CPU {row['cpu_ms']:7.2f} ms")
    if args.json:
        report = {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "threads": args.threads,
            "reps": args.reps,
            "openvino": ov.get_version(),
            "rows": rows,
        }
        args.json.write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
