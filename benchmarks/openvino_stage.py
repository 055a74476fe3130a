"""One stage graph at one K on ONNX Runtime fp32 and OpenVINO f32 / bf16, interleaved.

    python benchmarks/openvino_stage.py PACKAGE --k 96 --reps 20 --threads 2

Times stage 0 of an exported package for one stream (B = 1), the engines as the runtime
calls them, round-robin so that load on the machine falls on every configuration alike;
also OpenVINO compiled once for dynamic shapes (what the backend does not do: it compiles
static shapes per K bucket and batch) and the load time and resident memory of each
backend. Prints ONNX Runtime's execution providers (the PyPI wheel has no OpenVINO EP)
and OpenVINO's CPU capabilities (bf16 is native only where they list BF16).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import onnxruntime as ort
import openvino as ov

from rgtp.engines import load_engines
from rgtp.engines.openvino_backend import compile_config
from rgtp.export.onnx_graphs import example_inputs


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("package", type=Path)
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()

    print("onnxruntime", ort.__version__, "providers:", ort.get_available_providers())
    core = ov.Core()
    print("openvino", ov.get_version(), "CPU:", core.get_property("CPU", "FULL_DEVICE_NAME"))
    print("  capabilities:", core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))

    engines = {}
    for name, backend, options in [
        ("ort fp32", "ort", {}),
        ("openvino f32", "openvino", {"precision": "fp32"}),
        ("openvino bf16", "openvino", {"precision": "bf16"}),
    ]:
        before, t = peak_rss_mb(), time.perf_counter()
        engines[name] = load_engines(args.package, backend, threads=args.threads, **options)
        print(
            f"{name:20s} load {time.perf_counter() - t:6.1f} s, "
            f"peak RSS +{peak_rss_mb() - before:.0f} MB"
        )
    ref = engines["ort fp32"]
    stage = ref.stage(0, args.k)
    plan = ref.plan
    inputs = example_inputs(stage.spec, args.k, plan.num_tokens, plan.prefix, batch=1)
    feeds = {t.name: x for t, x in zip(stage.spec.inputs, inputs, strict=True)}
    runs = {name: (lambda e=e: e.stage(0, args.k).run(feeds)) for name, e in engines.items()}

    symbolic = args.package / "stage0_kK.onnx"
    if symbolic.exists():
        t = time.perf_counter()
        dynamic = core.compile_model(
            core.read_model(str(symbolic)), "CPU", compile_config("fp32", args.threads)
        )
        print(f"{'openvino f32 dynamic':20s} compile {time.perf_counter() - t:.1f} s")
        request = dynamic.create_infer_request()
        arrays = {n: x.numpy() for n, x in feeds.items()}
        runs["openvino f32 dynamic"] = lambda: request.infer(arrays)

    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():  # warm-up: first-call allocations
        run()
    for _ in range(args.reps):
        for name, run in runs.items():
            t = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - t) * 1e3)
    print(f"stage 0 at K = {args.k}, B = 1, {args.reps} interleaved runs each")
    for name, ts in times.items():
        print(f"  {name:22s} median {statistics.median(ts):8.1f} ms   min {min(ts):8.1f} ms")


if __name__ == "__main__":
    main()
