"""The detector's embed and head graphs per backend x precision, interleaved, and where the
head's time goes.

    python benchmarks/head_profile.py --model vitdet-b --size 672 --reps 10 --threads 2 \
        --json benchmarks/results/head_profile.json

Random weights (timing only). Exports the embed and head graphs as `rgtp export` does
(`family.modules`, `export_graph`), then their int8 forms through `export.quantize`:
"dynamic" (ONNX Runtime's integer ops) and "static" (Q/DQ, per-channel, calibrated on
`--calibration` random feeds of a fixed seed), each with the operator types of
`--op-types` sets. Timing: one warm-up, then `--reps` rounds, each configuration once a
round in turn (load on a shared machine falls on all alike); medians and minima of the wall
time. Profiles: ONNX Runtime's per-op time (fp32) and OpenVINO's per-node counters (f32),
summed by operator type. Also the head's analytic MACs (`families.detection.flops`).
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
import torch

from rgtp.export.onnx_graphs import export_graph
from rgtp.export.quantize import Int8Settings, quantize_graph
from rgtp.families import get_config
from rgtp.families.detection.detector import Detector
from rgtp.families.detection.flops import neck_head_macs
from rgtp.package.family import family_of
from rgtp.package.plan import StagePlan


def graphs(model: str, size: int) -> dict[str, tuple[onnx.ModelProto, dict[str, np.ndarray]]]:
    """The embed and head graphs of `model` at `size` (random weights) and a feed each."""
    torch.manual_seed(0)
    detector = Detector(get_config(model, size)).eval()
    plan = StagePlan.create(detector.cfg, [detector.cfg.backbone.num_tokens], "per-global")
    modules = family_of(detector.cfg).modules(detector, plan)
    out = {}
    for name, spec in (("embed", plan.embed_spec()), ("head", plan.head_spec())):
        # pixels in [0, 255] for the embed graph, features for the head (as the exporter)
        scale = 255.0 if name == "embed" else 1.0
        args = tuple(torch.rand(t.concrete({})) * scale for t in spec.inputs)
        graph = export_graph(modules[name], spec, args)
        feeds = {t.name: a.numpy() for t, a in zip(spec.inputs, args, strict=True)}
        out[name] = (graph, feeds)
    return out


def calibration(feeds: dict[str, np.ndarray], count: int) -> list[dict[str, np.ndarray]]:
    """`count` random feeds shaped and scaled like `feeds` (fixed seed)."""
    rng = np.random.default_rng(0)
    return [
        {n: (rng.random(x.shape) * float(x.max())).astype(np.float32) for n, x in feeds.items()}
        for _ in range(count)
    ]


def ort_session(path: Path, threads: int | None, profile: bool = False):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def main() -> None:
    import openvino as ov

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vitdet-b")
    p.add_argument("--size", type=int, default=672)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--calibration", type=int, default=4, help="random feeds for static scales")
    p.add_argument(
        "--op-types",
        default="MatMul;MatMul,Conv",
        help="';'-separated sets of quantized operator types, each ','-separated",
    )
    p.add_argument("--graphs", default="embed,head")
    p.add_argument("--no-ort-dynamic", action="store_true", help="skip ORT's dynamic int8")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    cfg = get_config(args.model, args.size)
    macs = neck_head_macs(cfg)
    print(f"{args.model} @ {args.size}: neck + head {macs / 1e9:.1f} GMACs (analytic)")
    tmp = Path(tempfile.mkdtemp(prefix="rgtp-head-"))
    core = ov.Core()
    ov_config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if args.threads:
        ov_config["INFERENCE_NUM_THREADS"] = str(args.threads)
    runs: dict[str, object] = {}
    profiled: dict[str, object] = {}
    ov_requests: dict[str, object] = {}
    sets = [tuple(s.split(",")) for s in args.op_types.split(";")]
    wanted = args.graphs.split(",")
    for name, (graph, feeds) in graphs(args.model, args.size).items():
        if name not in wanted:
            continue
        types = sorted({n.op_type for n in graph.graph.node})
        print(f"{name}: {len(graph.graph.node)} nodes, op types {types}")
        fp32 = tmp / f"{name}.onnx"
        onnx.save(graph, str(fp32))
        sess = ort_session(fp32, args.threads, profile=True)
        profiled[name] = sess
        runs[f"{name} ort fp32"] = lambda s=sess, f=feeds: s.run(None, f)
        req = core.compile_model(str(fp32), "CPU", {**ov_config, "PERF_COUNT": "YES"})
        req = req.create_infer_request()
        ov_requests[name] = req
        runs[f"{name} openvino f32"] = lambda r=req, f=feeds: r.infer(f)
        calib = calibration(feeds, args.calibration)
        for ops in sets:
            tag = "+".join(ops)
            if not args.no_ort_dynamic:
                dyn = tmp / f"{name}_dyn_{tag}.onnx"
                onnx.save(quantize_graph(graph, Int8Settings("dynamic", False, ops)), str(dyn))
                try:
                    s = ort_session(dyn, args.threads)
                    runs[f"{name} ort int8 dynamic [{tag}]"] = lambda s=s, f=feeds: s.run(None, f)
                except Exception as e:
                    print(f"  ort int8 dynamic [{tag}]: {type(e).__name__}: {str(e)[:200]}")
            qdq = tmp / f"{name}_qdq_{tag}.onnx"
            onnx.save(quantize_graph(graph, Int8Settings("static", True, ops), calib), str(qdq))
            r = core.compile_model(str(qdq), "CPU", ov_config).create_infer_request()
            runs[f"{name} openvino int8 qdq [{tag}]"] = lambda r=r, f=feeds: r.infer(f)
            s = ort_session(qdq, args.threads)
            runs[f"{name} ort int8 qdq [{tag}]"] = lambda s=s, f=feeds: s.run(None, f)

    for run in runs.values():  # warm-up: first-call allocations
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    ov_types: dict[str, dict[str, float]] = {n: defaultdict(float) for n in ov_requests}
    for _ in range(args.reps):
        for name, run in runs.items():
            t = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - t) * 1e3)
            graph_name, _, rest = name.partition(" ")
            if rest == "openvino f32":
                for info in ov_requests[graph_name].profiling_info:
                    if info.status == info.Status.EXECUTED:
                        ov_types[graph_name][info.node_type] += info.real_time.total_seconds() * 1e3

    result: dict = {
        "model": args.model,
        "size": args.size,
        "reps": args.reps,
        "threads": args.threads,
        "neck_head_gmacs": macs / 1e9,
        "median_ms": {},
        "min_ms": {},
        "ort_fp32_by_op_ms": {},
        "openvino_f32_by_type_ms": {},
    }
    print(f"\n{args.reps} interleaved rounds, B = 1, threads {args.threads}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:42s} median {med:8.1f} ms  min {min(ts):8.1f} ms")
        result["median_ms"][name], result["min_ms"][name] = med, min(ts)
    for name, sess in profiled.items():
        trace = json.loads(Path(sess.end_profiling()).read_text())
        ops: dict[str, float] = defaultdict(float)
        for ev in trace:
            if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
                ops[ev["args"]["op_name"]] += ev["dur"] / 1e3
        per_run = {k: v / (args.reps + 1) for k, v in ops.items()}
        total = sum(per_run.values())
        print(f"\n{name} ort fp32: per-op time, ms a run (of {total:.1f})")
        for key, ms in sorted(per_run.items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"    {key:30s} {ms:8.2f}  {100 * ms / total:5.1f} %")
        result["ort_fp32_by_op_ms"][name] = per_run
    for name, types in ov_types.items():
        per_run = {k: v / args.reps for k, v in types.items()}
        total = sum(per_run.values())
        print(f"\n{name} openvino f32: per-node time by type, ms a run (of {total:.1f})")
        for key, ms in sorted(per_run.items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"    {key:30s} {ms:8.2f}  {100 * ms / total:5.1f} %")
        result["openvino_f32_by_type_ms"][name] = per_run
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
