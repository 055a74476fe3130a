"""Where a pruned frame's time goes on CUDA: per part of the frame, the GPU's busy time (sum of
its kernels and copies), the host's time inside the part, and the GPU's idle time inside the
part's window (what waiting for the host costs), from a torch.profiler trace (issue 15).

    python benchmarks/gpu_profile.py --size 1024 --keep 750 --precision fp16 --json prof.json

The part names are those of `runtime.timing` (prepare, embed, select, stages, scatter, head,
rollout); the frame's parts are marked with `torch.profiler.record_function` for the run.
Weights are random (`gpu.random_detector`); frames a moving texture. Writes the summary as
JSON and, with --trace, the Chrome trace.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch
from backbone_timing import moving_frames
from gpu import random_detector
from torch.profiler import ProfilerActivity, profile, record_function

from rgtp.core.selection import FixedKeep
from rgtp.runtime import Pipeline
from rgtp.runtime import timing as timing_module

PART = "part:"


def mark_parts() -> None:
    """Wrap every timed part of a frame in a profiler range named part:<name>."""
    original = timing_module.PartTimer.__call__

    @contextmanager
    def marked(self, part: str):
        with record_function(PART + part), original(self, part):
            yield

    timing_module.PartTimer.__call__ = marked


def intervals_union(spans: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def summarise(trace: dict, frames: int) -> dict:
    """Per part, per frame: the host's time in it (its CPU range), the GPU's span for it (the
    range the profiler draws on the GPU: from when the GPU reached the part to when it finished
    the part's last work) and the GPU's busy time in that span (kernels, copies, memsets); span
    minus busy is the GPU waiting for the host."""
    events = [e for e in trace["traceEvents"] if e.get("ph") == "X"]

    def ranges(category: str) -> list[dict]:
        return [e for e in events if e.get("cat") == category and e["name"].startswith(PART)]

    work = sorted(
        (e["ts"], e["ts"] + e["dur"])
        for e in events
        if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")
    )
    out: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for e in ranges("user_annotation"):
        out[e["name"][len(PART) :]]["host_us"] += e["dur"] / frames
    for e in ranges("gpu_user_annotation"):
        a, b = e["ts"], e["ts"] + e["dur"]
        inside = [(max(s, a), min(t, b)) for s, t in work if s < b and t > a]
        row = out[e["name"][len(PART) :]]
        row["gpu_span_us"] += e["dur"] / frames
        row["gpu_busy_us"] += intervals_union(inside) / frames
        row["gpu_ops"] += len(inside) / frames
    for row in out.values():
        row["gpu_idle_us"] = row["gpu_span_us"] - row["gpu_busy_us"]
    return {k: dict(v) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--keep", type=int, default=750)
    ap.add_argument("--precision", default="fp16")
    ap.add_argument("--eager", action="store_true", help="no CUDA graphs")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--frames", type=int, default=5)
    ap.add_argument("--json", default="out/bench/gpu_profile.json")
    ap.add_argument("--trace", default=None, help="also write the Chrome trace here")
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of the script")
    args = ap.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu for a dry run", file=sys.stderr)
        return 2
    mark_parts()
    detector = random_detector(args.size)
    pipe = Pipeline.from_model(
        detector,
        [args.keep],
        device=args.device,
        precision=args.precision,
        cuda_graphs=cuda and not args.eager,
    )
    stream = pipe.new_stream(policy=FixedKeep(args.keep), reset_every=0)
    frames = moving_frames(1 + args.warmup + args.frames, args.size)
    for f in frames[: 1 + args.warmup]:
        stream.step(f)
    if cuda:
        torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for f in frames[1 + args.warmup :]:
            stream.step(f)
        if cuda:
            torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(args.trace) if args.trace else Path(scratch) / "trace.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(path))
        summary = summarise(json.loads(path.read_text()), args.frames)
    mode = "cuda-graphs" if cuda and not args.eager else "eager"
    print(f"{args.size} px K={args.keep} {args.precision} {mode}")
    print(f"{'part':>10}{'host us':>10}{'gpu span':>10}{'gpu busy':>10}{'gpu idle':>10}{'ops':>7}")
    for name, row in summary.items():
        print(
            f"{name:>10}{row.get('host_us', 0):>10.0f}{row.get('gpu_span_us', 0):>10.0f}"
            f"{row.get('gpu_busy_us', 0):>10.0f}{row.get('gpu_idle_us', 0):>10.0f}"
            f"{row.get('gpu_ops', 0):>7.1f}"
        )
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"args": vars(args), "parts": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
