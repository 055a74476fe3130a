"""A stage's graph at one K traced directly against the same graph derived from the stage's
symbolic-K trace (`rgtp.export.onnx_graphs.fix_k`, what `rgtp export` writes): trace and
derivation time, max abs difference of the outputs in ONNX Runtime and OpenVINO, and
interleaved run-time medians (one thread each) in both.

    python benchmarks/derived_graphs.py --model vitdet-small --stage 0 --keep 64,128,256 \
        --json benchmarks/results/derived-graphs-vitdet-small-2026-12-07.json

Random weights: what is compared is two graphs of the same computation, not accuracy.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from rgtp.export.onnx_graphs import SYMBOLIC_K, example_inputs, export_graph, fix_k
from rgtp.families import get_config
from rgtp.models.stages import stage_modules
from rgtp.package.plan import StagePlan


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vitdet-small")
    p.add_argument("--stage", type=int, default=0)
    p.add_argument("--keep", default="64,128,256", help="comma-separated K")
    p.add_argument("--partition", default="per-global")
    p.add_argument("--reps", type=int, default=30, help="timed runs of each graph a setting")
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    import openvino as ov

    cfg = get_config(args.model)
    torch.manual_seed(0)
    plan = StagePlan.create(cfg, [int(k) for k in args.keep.split(",")], args.partition)
    model = plan.family.build(cfg).eval()
    stage = stage_modules(plan.family.encoder(model), plan)[args.stage]
    n, prefix = plan.num_tokens, plan.prefix
    spec = plan.stage_spec(args.stage, SYMBOLIC_K)
    t = time.perf_counter()
    symbolic = export_graph(stage, spec, example_inputs(spec, n // 2 + 1, n, prefix, 2), True)
    print(f"{spec.name}: traced in {time.perf_counter() - t:.1f} s")
    results: dict[str, object] = {"model": args.model, "stage": args.stage, "graphs": {}}
    core = ov.Core()
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    for k in (int(k) for k in args.keep.split(",")):
        spec = plan.stage_spec(args.stage, k)
        t = time.perf_counter()
        direct = export_graph(stage, spec, example_inputs(spec, k, n, prefix, 2))
        traced_s = time.perf_counter() - t
        t = time.perf_counter()
        derived = fix_k(symbolic, spec)
        derived_s = time.perf_counter() - t
        graphs = {"direct": direct, "derived": derived}
        ops = {v: len(g.graph.node) for v, g in graphs.items()}
        print(f"{spec.name}: traced {traced_s:.1f} s, derived {derived_s:.2f} s, nodes {ops}")
        runners = {
            v: {
                "ort": ort.InferenceSession(g.SerializeToString(), options).run,
                "openvino": core.compile_model(
                    core.read_model(g.SerializeToString()), "CPU", {"INFERENCE_NUM_THREADS": 1}
                ),
            }
            for v, g in graphs.items()
        }
        for batch in (1, 4):
            inputs = example_inputs(spec, k, n, prefix, batch)
            feed = {s.name: a.numpy() for s, a in zip(spec.inputs, inputs, strict=True)}
            outputs = {
                v: {
                    "ort": r["ort"](None, feed),
                    "openvino": [np.asarray(o) for o in r["openvino"](feed).values()],
                }
                for v, r in runners.items()
            }
            diff = {
                rt: max(
                    float(np.abs(a - b).max())
                    for a, b in zip(outputs["direct"][rt], outputs["derived"][rt], strict=True)
                )
                for rt in ("ort", "openvino")
            }
            times: dict[str, list[float]] = {
                f"{rt}-{v}": [] for rt in ("ort", "openvino") for v in graphs
            }
            for rep in range(args.reps):
                # alternate which goes first: neither always runs on a warmer cache
                for v in ("direct", "derived") if rep % 2 else ("derived", "direct"):
                    t = time.perf_counter()
                    runners[v]["ort"](None, feed)
                    times[f"ort-{v}"].append(time.perf_counter() - t)
                    t = time.perf_counter()
                    runners[v]["openvino"](feed)
                    times[f"openvino-{v}"].append(time.perf_counter() - t)
            median = {key: round(1e3 * float(np.median(v)), 3) for key, v in times.items()}
            print(f"  B={batch}: max abs diff {diff}; median ms {median}")
            results["graphs"][f"{spec.name}_B{batch}"] = {
                "traced_s": traced_s,
                "derived_s": derived_s,
                "nodes": ops,
                "max_abs_diff": diff,
                "median_ms": median,
            }
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
