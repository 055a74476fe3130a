"""Where a stage graph's time goes: OpenVINO's per-node counters (and ONNX Runtime's
profiler) summed by operator type, and several graphs timed interleaved.

    python benchmarks/stage_profile.py out/bench/vitdet-b-672-int8-qdq/stage1_k512.onnx \
        other/stage1_k512.onnx --reps 10 --threads 2 [--ort] [--json out.json]
    python benchmarks/stage_profile.py g.onnx "g.onnx@CPU_DENORMALS_OPTIMIZATION=YES" ...

A graph named PATH@KEY=VALUE,KEY=VALUE is compiled with those OpenVINO properties added (the
same graph under two configurations, timed interleaved).

Every graph is fed the same random inputs for one stream (B = 1; `keep`: sorted distinct
rows), compiled for that static shape as the OpenVINO backend does. Timing: warm-up, then
`--reps` rounds, each graph once a round in turn (load on a shared machine falls on all
alike); medians of the wall time, and of the process's CPU time (user + system) a run, which
a loaded machine inflates much less than the wall time (with `--threads 1` it is the work
done, give or take caches). The profile: OpenVINO's PERF_COUNT real time per executed node,
summed by the node's type and by the part of the graph its name says it belongs to (attention,
weight matmuls, gathers/copies...), over the same rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx


def feeds_for(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Random feeds for a stage graph's inputs, the batch axis at 1; `keep` sorted distinct
    rows of the caches' N."""
    model = onnx.load(str(path), load_external_data=False)
    rng = np.random.default_rng(seed)
    shapes, int8 = {}, set()
    for v in model.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in v.type.tensor_type.shape.dim]
        shapes[v.name] = dims
        if v.type.tensor_type.elem_type == onnx.TensorProto.INT8:
            int8.add(v.name)  # a static int8 package's caches
    n = max(s[1] for name, s in shapes.items() if name != "keep" and len(s) == 3)
    feeds = {}
    for name, dims in shapes.items():
        if name == "keep":
            feeds[name] = np.sort(rng.permutation(n)[: dims[1]])[None].astype(np.int64)
        elif name in int8:
            feeds[name] = rng.integers(-64, 64, dims).astype(np.int8)
        else:
            feeds[name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def part_of(node_type: str) -> str:
    """A coarse bucket of an OpenVINO executed node type."""
    t = node_type.lower()
    if "fullyconnected" in t or t == "fc":
        return "weight matmul (FC)"
    if t in ("matmul",):
        return "activation matmul"
    if "scaleddotproductattention" in t or "sdpa" in t:
        return "fused attention (SDPA)"
    if t in (
        "gather",
        "gatherelements",
        "gathernd",
        "scatterupdate",
        "scatterndupdate",
        "scatterelementsupdate",
        "scatter",
    ):
        return "gather/scatter"
    if t in (
        "reorder",
        "transpose",
        "reshape",
        "concatenation",
        "concat",
        "split",
        "stridedslice",
        "broadcast",
        "tile",
    ):
        return "layout (reorder/transpose/concat/split)"
    if t in ("softmax", "softmax_v8"):
        return "softmax"
    if t in ("mvn", "normalizel2", "rmsnorm"):
        return "norm"
    if t in ("eltwise", "subgraph", "multiply", "add", "power", "sqrt", "divide"):
        return "elementwise/subgraph"
    return "other"


def main() -> None:
    import openvino as ov

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("graphs", nargs="+", help="ONNX paths, each optionally @KEY=VALUE,...")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--ort", action="store_true", help="also ONNX Runtime fp32 with its profiler")
    p.add_argument("--top", type=int, default=12, help="node types listed per graph")
    p.add_argument("--nodes", type=int, default=0, help="also the N slowest nodes by name")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": "YES"}
    if args.threads:
        config["INFERENCE_NUM_THREADS"] = str(args.threads)
    runs, requests, feeds = {}, {}, {}
    for name in args.graphs:
        file, _, extra = name.partition("@")
        path = Path(file)
        feeds[name] = feeds_for(path)
        model = core.read_model(str(path))
        model.reshape({i.get_any_name(): feeds[name][i.get_any_name()].shape for i in model.inputs})
        own = dict(config, **dict(kv.split("=", 1) for kv in extra.split(",") if kv))
        request = core.compile_model(model, "CPU", own).create_infer_request()
        requests[name] = request
        runs[name] = lambda r=request, f=feeds[name]: r.infer(f)
    ort_sessions = {}
    if args.ort:
        import onnxruntime as ort

        for path in {Path(g.partition("@")[0]) for g in args.graphs}:
            opts = ort.SessionOptions()
            if args.threads:
                opts.intra_op_num_threads = args.threads
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.enable_profiling = True
            opts.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort")
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            ort_sessions[str(path)] = sess
            ort_feeds = feeds_for(path)
            runs[f"ort:{path}"] = lambda s=sess, f=ort_feeds: s.run(None, f)

    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    by_type: dict[str, dict[str, float]] = {n: defaultdict(float) for n in requests}
    by_node: dict[str, dict[str, float]] = {n: defaultdict(float) for n in requests}
    node_kind: dict[str, str] = {}
    for _ in range(args.reps):
        for name, run in runs.items():
            t, c = time.perf_counter(), time.process_time()
            run()
            times[name].append((time.perf_counter() - t) * 1e3)
            cpu[name].append((time.process_time() - c) * 1e3)
            if name in requests:
                for info in requests[name].profiling_info:
                    if info.status == info.Status.EXECUTED:
                        ms = info.real_time.total_seconds() * 1e3
                        by_type[name][info.exec_type + " | " + info.node_type] += ms
                        by_node[name][info.node_name] += ms
                        node_kind[info.node_name] = f"{info.exec_type} | {info.node_type}"

    result: dict = {"reps": args.reps, "threads": args.threads, "graphs": {}}
    print(f"{args.reps} interleaved rounds, one stream (B = 1); OpenVINO with PERF_COUNT on")
    for name, ts in times.items():
        used = statistics.median(cpu[name])
        print(
            f"  {name:60s} median {statistics.median(ts):7.1f} ms  min {min(ts):7.1f} ms  "
            f"CPU {used:7.1f} ms"
        )
        result["graphs"][name] = {"median_ms": statistics.median(ts), "cpu_ms": used}
    for name, types in by_type.items():
        total = sum(types.values())
        per_run = total / args.reps
        print(f"\n{name}: OpenVINO per-node time summed by type, ms a run (of {per_run:.1f})")
        parts: dict[str, float] = defaultdict(float)
        for key, ms in types.items():
            parts[part_of(key.split(" | ")[1])] += ms
        for key, ms in sorted(types.items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"    {key:55s} {ms / args.reps:8.2f}  {100 * ms / total:5.1f} %")
        print("  by part:")
        for key, ms in sorted(parts.items(), key=lambda kv: -kv[1]):
            print(f"    {key:55s} {ms / args.reps:8.2f}  {100 * ms / total:5.1f} %")
        result["graphs"][name]["openvino_by_type_ms"] = {k: v / args.reps for k, v in types.items()}
        if args.nodes:
            print(f"  the {args.nodes} slowest nodes, ms a run:")
            for node, ms in sorted(by_node[name].items(), key=lambda kv: -kv[1])[: args.nodes]:
                print(f"    {ms / args.reps:8.2f}  {node_kind[node]:50s} {node}")
    for name, sess in ort_sessions.items():
        trace = json.loads(Path(sess.end_profiling()).read_text())
        ops: dict[str, float] = defaultdict(float)
        for ev in trace:
            if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
                ops[ev["args"]["op_name"]] += ev["dur"] / 1e3
        total = sum(ops.values())
        runs_seen = args.reps + 1
        print(f"\nort:{name}: ONNX Runtime per-op time, ms a run (of {total / runs_seen:.1f})")
        for key, ms in sorted(ops.items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"    {key:55s} {ms / runs_seen:8.2f}  {100 * ms / total:5.1f} %")
        result["graphs"][f"ort:{name}"]["ort_by_op_ms"] = {k: v / runs_seen for k, v in ops.items()}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
