"""Load on the Triton server against the same streams batched in this process.

    python benchmarks/serve_load.py --streams 1,4,8,16 --frames 64 --keep 77 \
        --json benchmarks/results/serve-load-vitdet-small-DATE.json

Writes a repository for the package (`rgtp triton`, max streams = the largest count),
starts the server (`rgtp serve`'s `TritonServer`) on loopback ports, and for each stream
count N drives N concurrent sequences (one thread and one gRPC client each, one held-out
SynthVID video each, every frame with its FRAME_INDEX, a request answered before the next
is sent). Right after, with the server idle, the same N videos step in this process as N
streams of one pipeline through `Pipeline.step_many` (one call per frame time, the streams
at the same K sharing each engine call, as the served model batches them): the two sides of
a row see the same load on a shared machine. Printed and written to JSON: frames/s and
p50/p95/p99 latency per frame both ways, the CPU seconds the clients took (this process,
while serving), the server's own metrics over the run (requests per execute, queue and
compute time per request), and the throughput ratio (served frames/s / in-process). Every
run also checks the serving: sequences dropped (any request failed), sequences whose
detections or kept tokens differ from in process in any bit, and the model's open-streams
gauge after the last END (0).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

# Before torch loads its OpenMP runtime: OpenMP threads spinning between torch's parts take
# the cores from ONNX Runtime's, which made the steps in this process 4x slower than the
# same steps served on 2 cores. The server's stub gets the same from its launcher
# (`rgtp.serving.environment`); one already set wins, on both sides.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from rgtp.data.synthvid import SynthVIDConfig, generate_sequence, heldout_seeds
from rgtp.export.ensure import ensure_package
from rgtp.families.loading import load_model
from rgtp.package.plan import StagePlan
from rgtp.runtime import Pipeline
from rgtp.serving import ServingSettings, write_repository
from rgtp.serving.server import TritonServer

METRICS = (
    "nv_inference_request_success",
    "nv_inference_exec_count",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us",
)
COMPARED = ("K", "KEEP", "BOXES", "SCORES", "LABELS")  # what must equal in-process bit for bit


def package_for(args: argparse.Namespace) -> Path:
    if args.package:
        return Path(args.package)
    det = load_model("vitdet-small").model
    plan = StagePlan.create(det.cfg, [args.keep])
    return ensure_package(det, plan, "out/bench/serve-package", symbolic=False)


def videos(count: int, frames: int) -> list[np.ndarray]:
    cfg = SynthVIDConfig(num_frames=frames)
    return [generate_sequence(seed, cfg).frames for seed in heldout_seeds(count)]


def summary(latencies_s: list[float], frames: int, wall_s: float) -> dict[str, float]:
    """Frames per second over the wall time, and per-frame latency (ms) percentiles."""
    ms = np.array(latencies_s) * 1e3
    return {
        "frames": frames,
        "frames_per_s": frames / wall_s,
        "mean_ms": float(ms.mean()),
        **{f"p{q}_ms": float(np.percentile(ms, q)) for q in (50, 95, 99)},
    }


def metrics_text(server: TritonServer) -> str:
    return urllib.request.urlopen(f"http://{server.metrics_url}/metrics").read().decode()


def server_metrics(server: TritonServer, model: str) -> dict[str, float]:
    text, found = metrics_text(server), {}
    for name in [*METRICS, "rgtp_streams"]:
        m = re.search(rf'^{name}{{model="{re.escape(model)}"[^}}]*}} (\S+)$', text, re.M)
        found[name] = float(m[1]) if m else float("nan")
    return found


def served(server: TritonServer, model: str, clips, n: int, first_id: int) -> dict:
    """N concurrent sequences over clips[:n]: their timing, the server's metrics over the
    run, and per sequence its outputs (COMPARED, per frame) or the error that ended it."""
    latencies: list[float] = []
    outputs: dict[int, list | str] = {}
    lock = threading.Lock()

    def run(i: int) -> None:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        frames, got, own = clips[i], [], []
        try:
            for t, frame in enumerate(frames):
                x = grpcclient.InferInput("FRAME", [1, *frame.shape], "UINT8")
                x.set_data_from_numpy(frame[None])
                index = grpcclient.InferInput("FRAME_INDEX", [1, 1], "INT64")
                index.set_data_from_numpy(np.array([[t]], dtype=np.int64))
                start = time.perf_counter()
                response = client.infer(
                    model,
                    [x, index],
                    sequence_id=first_id + i,
                    sequence_start=t == 0,
                    sequence_end=t == len(frames) - 1,
                )
                own.append(time.perf_counter() - start)
                got.append({name: response.as_numpy(name)[0] for name in COMPARED})
        except InferenceServerException as e:
            got = f"frame {len(got)}: {e}"
        finally:
            client.close()
        with lock:
            latencies.extend(own)
            outputs[i] = got

    before = server_metrics(server, model)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    start, cpu = time.perf_counter(), time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    after = server_metrics(server, model)
    delta = {k: after[k] - before[k] for k in METRICS}
    requests = max(delta["nv_inference_request_success"], 1)
    return {
        "timing": summary(latencies, len(latencies), wall) | {"client_cpu_s": cpu},
        "server_metrics": {
            "requests": delta["nv_inference_request_success"],
            "executes": delta["nv_inference_exec_count"],
            "requests_per_execute": requests / max(delta["nv_inference_exec_count"], 1),
            "queue_ms_per_request": delta["nv_inference_queue_duration_us"] / requests / 1e3,
            "compute_ms_per_request": delta["nv_inference_compute_infer_duration_us"]
            / requests
            / 1e3,
            "streams_after_end": after["rgtp_streams"],
        },
        "outputs": outputs,
    }


def in_process(pipe: Pipeline, settings: ServingSettings, clips, n: int) -> tuple[dict, list]:
    """The same N videos as N streams stepped together, one `step_many` call per frame time
    (each stream's frame latency is that call's). Returns the timing and per stream its
    outputs per frame, named as the served ones."""
    streams = [pipe.new_stream(settings.stream_options()) for _ in range(n)]
    latencies, outputs = [], [[] for _ in range(n)]
    wall = 0.0
    for t in range(len(clips[0])):
        start = time.perf_counter()
        results = pipe.step_many(streams, [clips[i][t] for i in range(n)])
        took = time.perf_counter() - start
        wall += took
        latencies += [took] * n
        for out, r in zip(outputs, results, strict=True):
            dets = r.detections
            out.append(
                {
                    "K": np.array([r.k]),
                    "KEEP": r.keep.numpy(),
                    "BOXES": dets.boxes.numpy(),
                    "SCORES": dets.scores.numpy(),
                    "LABELS": dets.labels.numpy(),
                }
            )
    return summary(latencies, len(latencies), wall), outputs


def check(served_outputs: dict, ours: list) -> dict:
    """Sequences dropped (a request failed) and those whose outputs differ in any bit."""
    dropped = {i: o for i, o in served_outputs.items() if isinstance(o, str)}
    differ = [
        i
        for i, frames in served_outputs.items()
        if i not in dropped
        and any(
            not np.array_equal(a[name], b[name])
            for a, b in zip(frames, ours[i], strict=True)
            for name in COMPARED
        )
    ]
    return {"dropped": len(dropped), "first_drops": list(dropped.values())[:3], "differ": differ}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--package", default=None, help="default: export vitdet-small (cached)")
    ap.add_argument("--streams", default="1,4,8,16", help="concurrent stream counts")
    ap.add_argument("--frames", type=int, default=64, help="frames per stream")
    ap.add_argument("--keep", type=int, default=77)
    ap.add_argument("--json", default="out/bench/serve_load.json")
    args = ap.parse_args()
    args.counts = [int(v) for v in args.streams.split(",")]
    package = package_for(args)
    settings = ServingSettings(keep=args.keep, max_streams=max(args.counts), idle_timeout_s=60.0)
    clips = videos(max(args.counts), args.frames)
    rows = []
    pipe = Pipeline.load(package, backend=settings.backend)
    in_process(pipe, settings, [clips[0][:3]], 1)  # warm-up, not measured
    with tempfile.TemporaryDirectory() as tmp:
        model = write_repository(package, Path(tmp) / "repo", settings)
        with TritonServer(model.parent) as server:
            served(server, model.name, [clips[0][:3]], 1, first_id=1)  # warm-up, not measured
            for n in args.counts:
                row = {"streams": n, **served(server, model.name, clips, n, 1000 * n)}
                row["served"] = row.pop("timing")
                row["in_process"], ours = in_process(pipe, settings, clips, n)
                row["check"] = check(row.pop("outputs"), ours)
                row["throughput_ratio"] = (
                    row["served"]["frames_per_s"] / row["in_process"]["frames_per_s"]
                )
                rows.append(row)
    print(
        f"{'streams':>7} | {'where':<10} | {'frames/s':>8} | {'p50 ms':>7} | {'p95 ms':>7} | "
        f"{'p99 ms':>7} | server: req/exec, queue ms, compute ms; client CPU s"
    )
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
                    f"{m['compute_ms_per_request']:.1f}; {s['client_cpu_s']:.2f}"
                )
            print(line)
        c = row["check"]
        print(
            f"{'':>7}   throughput ratio {row['throughput_ratio']:.2f}; dropped {c['dropped']}, "
            f"differ from in process {len(c['differ'])}, streams open after END "
            f"{row['server_metrics']['streams_after_end']:g}"
        )
    report = {
        "package": str(package),
        "settings": json.loads(settings.to_json()),
        "frames_per_stream": args.frames,
        "in_process": "Pipeline.step_many over the same videos, one call per frame time",
        "rows": rows,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.json}")
    failed = [r["streams"] for r in rows if r["check"]["dropped"] or r["check"]["differ"]]
    if failed or any(r["server_metrics"]["streams_after_end"] != 0 for r in rows):
        raise SystemExit(f"serving check failed at {failed or 'the streams gauge'} streams")


if __name__ == "__main__":
    main()
