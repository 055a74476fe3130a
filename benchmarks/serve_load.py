"""Load on the Triton server against the same streams in this process.

    python benchmarks/serve_load.py --streams 1,4,8 --frames 64 --keep 77

Writes a repository for the package (`rgtp triton`), starts the bundled tritonserver on
loopback ports, and for each stream count N drives N concurrent client streams (one thread
and one gRPC client each, one held-out SynthVID sequence each, a request answered before
the next is sent). Then the same N streams step in this process over one pipeline, one
thread each. Printed and written to JSON (default out/bench/serve_load.json): frames/s, p50/
p95/p99 latency per frame, the server's own metrics over the run (requests per execute,
queue and compute time per request), serving overhead per frame (served mean latency minus
in-process mean latency, ms) and the throughput ratio (served frames/s / in-process).
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from rgtp.data.synthvid import SynthVIDConfig, generate_sequence, heldout_seeds
from rgtp.export.ensure import ensure_package
from rgtp.models import Detector, get_config
from rgtp.models.checkpoints import load_weights
from rgtp.models.plan import StagePlan
from rgtp.models.registry import shipped_weights
from rgtp.runtime import Pipeline
from rgtp.serving import ServingSettings, write_repository
from rgtp.serving.server import TritonServer

METRICS = (
    "nv_inference_request_success",
    "nv_inference_exec_count",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us",
)


def package_for(args: argparse.Namespace) -> Path:
    if args.package:
        return Path(args.package)
    det = Detector(get_config("vitdet-small"))
    load_weights(det, shipped_weights("vitdet-small"))
    plan = StagePlan.create(det.cfg, [args.keep])
    return ensure_package(det.eval(), plan, "out/bench/serve-package", symbolic=False)


def videos(count: int, frames: int) -> list[np.ndarray]:
    cfg = SynthVIDConfig(num_frames=frames)
    return [generate_sequence(seed, cfg).frames for seed in heldout_seeds(count)]


def summary(latencies_s: list[float], wall_s: float) -> dict[str, float]:
    ms = np.array(latencies_s) * 1e3
    return {
        "frames": len(ms),
        "frames_per_s": len(ms) / wall_s,
        "mean_ms": float(ms.mean()),
        **{f"p{q}_ms": float(np.percentile(ms, q)) for q in (50, 95, 99)},
    }


def concurrently(n: int, run_stream) -> tuple[list[float], float]:
    """Latencies of every frame of `run_stream(i, record)` for i < n run at once, and the
    wall time of the whole."""
    latencies: list[float] = []
    lock = threading.Lock()

    def record(seconds: float) -> None:
        with lock:
            latencies.append(seconds)

    threads = [threading.Thread(target=run_stream, args=(i, record)) for i in range(n)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - start


def server_metrics(server: TritonServer, model: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://{server.metrics_url}/metrics").read().decode()
    found = {}
    for name in METRICS:
        m = re.search(rf'^{name}{{model="{re.escape(model)}"[^}}]*}} (\S+)$', text, re.M)
        found[name] = float(m[1]) if m else float("nan")
    return found


def served(server, model, clips, n) -> tuple[dict, dict]:
    def run_stream(i: int, record) -> None:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        frames = clips[i]
        for t, frame in enumerate(frames):
            x = grpcclient.InferInput("FRAME", [1, *frame.shape], "UINT8")
            x.set_data_from_numpy(frame[None])
            start = time.perf_counter()
            client.infer(
                model,
                [x],
                sequence_id=1000 * n + i + 1,
                sequence_start=t == 0,
                sequence_end=t == len(frames) - 1,
            )
            record(time.perf_counter() - start)
        client.close()

    before = server_metrics(server, model)
    latencies, wall = concurrently(n, run_stream)
    after = server_metrics(server, model)
    delta = {k: after[k] - before[k] for k in METRICS}
    requests = max(delta["nv_inference_request_success"], 1)
    metrics = {
        "requests": delta["nv_inference_request_success"],
        "executes": delta["nv_inference_exec_count"],
        "requests_per_execute": requests / max(delta["nv_inference_exec_count"], 1),
        "queue_ms_per_request": delta["nv_inference_queue_duration_us"] / requests / 1e3,
        "compute_ms_per_request": delta["nv_inference_compute_infer_duration_us"] / requests / 1e3,
    }
    return summary(latencies, wall), metrics


def in_process(pipe: Pipeline, settings: ServingSettings, clips, n) -> dict:
    def run_stream(i: int, record) -> None:
        stream = pipe.new_stream(settings.stream_options())
        for frame in clips[i]:
            start = time.perf_counter()
            stream.step(frame)
            record(time.perf_counter() - start)

    return summary(*concurrently(n, run_stream))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--package", default=None, help="default: export vitdet-small (cached)")
    ap.add_argument("--streams", default="1,4,8", help="concurrent stream counts")
    ap.add_argument("--frames", type=int, default=64, help="frames per stream")
    ap.add_argument("--keep", type=int, default=77)
    ap.add_argument("--json", default="out/bench/serve_load.json")
    args = ap.parse_args()
    counts = [int(v) for v in args.streams.split(",")]
    package = package_for(args)
    settings = ServingSettings(keep=args.keep, max_streams=max(counts), idle_timeout_s=60.0)
    clips = videos(max(counts), args.frames)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = write_repository(package, Path(tmp) / "repo", settings)
        with TritonServer(model.parent) as server:
            served(server, model.name, [clips[0][:3]], 1)  # warm-up, not measured
            for n in counts:
                rows.append({"streams": n, "served": served(server, model.name, clips, n)})
    pipe = Pipeline.load(package, backend=settings.backend)
    in_process(pipe, settings, [clips[0][:3]], 1)  # warm-up, not measured
    for row in rows:
        row["served"], row["server_metrics"] = row["served"]
        row["in_process"] = ours = in_process(pipe, settings, clips, row["streams"])
        row["overhead_ms_per_frame"] = row["served"]["mean_ms"] - ours["mean_ms"]
        row["throughput_ratio"] = row["served"]["frames_per_s"] / ours["frames_per_s"]
    header = (
        f"{'streams':>7} | {'where':<10} | {'frames/s':>8} | {'p50 ms':>7} | {'p95 ms':>7} | "
        f"{'p99 ms':>7} | server: req/exec, queue ms, compute ms"
    )
    print(header)
    for row in rows:
        for where in ("served", "in_process"):
            s = row[where]
            line = (
                f"{row['streams']:>7} | {where:<10} | {s['frames_per_s']:8.1f} | "
                f"{s['p50_ms']:7.1f} | {s['p95_ms']:7.1f} | {s['p99_ms']:7.1f} |"
            )
            if where == "served":
                m = row["server_metrics"]
                line += (
                    f" {m['requests_per_execute']:.2f}, {m['queue_ms_per_request']:.1f}, "
                    f"{m['compute_ms_per_request']:.1f}"
                )
            print(line)
        print(
            f"{'':>7}   overhead {row['overhead_ms_per_frame']:+.1f} ms/frame, "
            f"throughput ratio {row['throughput_ratio']:.2f}"
        )
    report = {
        "package": str(package),
        "settings": json.loads(settings.to_json()),
        "frames_per_stream": args.frames,
        "rows": rows,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
