"""A latency budget held while another process loads the CPU: K and ms per frame.

    python benchmarks/latency_budget.py --model vitdet-small --budget-ms 0

The shipped model's package on ONNX Runtime (CPU); the policy (`LatencyBudget`) is
calibrated at load on a few frames, then one stream runs a held-out SynthVID sequence in
three phases: idle, with `--load` busy processes competing for the cores, idle again. Per
frame: the bucket chosen and the frame's time (whole frame: embed, stages, head, rollout).
Prints the share of frames within the budget per phase and writes JSON and a timeline plot
under out/bench/. `--budget-ms 0` takes the midpoint of the smallest bucket's and the dense
frame's calibrated times. Reset frames are dense by the method, so they are reported apart
(`--reset-every 0`, the default here, has only the first).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from rgtp.data.synthvid import SynthVIDConfig, generate_sequence, heldout_seeds
from rgtp.export.ensure import ensure_package
from rgtp.families import shipped_weights
from rgtp.families.loading import load_model
from rgtp.package.plan import StagePlan
from rgtp.runtime import Pipeline
from rgtp.runtime.latency_budget import LatencyBudget


def busy(stop: Any) -> None:
    """A competing process: matrix products until `stop` (an Event) is set."""
    torch.set_num_threads(1)
    a = torch.rand(256, 256)
    while not stop.is_set():
        for _ in range(20):
            a = torch.tanh(a @ a)


@contextmanager
def competing_load(processes: int) -> Iterator[None]:
    """`processes` busy processes running for the duration of the block."""
    stop = mp.Event()
    workers = [mp.Process(target=busy, args=(stop,), daemon=True) for _ in range(processes)]
    for w in workers:
        w.start()
    if workers:
        time.sleep(0.5)  # let them take the cores
    try:
        yield
    finally:
        stop.set()
        for w in workers:
            w.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="vitdet-small")
    ap.add_argument("--keep", dest="ks", default="32,64,96,128,192")
    ap.add_argument("--budget-ms", type=float, default=0.0)
    ap.add_argument("--frames", type=int, default=60, help="frames per phase")
    ap.add_argument("--load", type=int, default=2, help="busy processes in the loaded phase")
    ap.add_argument("--reset-every", type=int, default=0)
    ap.add_argument("--package", default=None, help="reuse/export the package here")
    ap.add_argument("--json", default="out/bench/latency_budget.json")
    args = ap.parse_args()

    torch.manual_seed(0)
    detector = load_model(args.model, random_init=shipped_weights(args.model) is None).model
    plan = StagePlan.create(detector.cfg, [int(k) for k in args.ks.split(",")], "per-global")
    pipe = Pipeline.load(ensure_package(detector, plan, args.package, symbolic=False), "ort")
    size = detector.cfg.backbone.img_size
    seq = generate_sequence(
        heldout_seeds(1)[0], SynthVIDConfig(size=size, num_frames=3 * args.frames + 4)
    )
    frames = list(seq.frames)

    budget = LatencyBudget(args.budget_ms or 1.0)
    start = time.perf_counter()
    budget.calibrate(pipe, frames[:4], repeats=3)
    calibration_s = time.perf_counter() - start
    buckets = pipe.plan.buckets
    if not args.budget_ms:
        budget.ms = (budget.baseline[buckets[0]] + budget.baseline[buckets[-1]]) / 2
    print(
        f"calibrated in {calibration_s:.1f} s: "
        + ", ".join(f"K={b} {ms:.1f} ms" for b, ms in budget.baseline.items())
    )
    print(f"budget {budget.ms:.1f} ms per frame")

    stream = pipe.new_stream(policy=budget, reset_every=args.reset_every)
    phases = {"idle": 0, f"{args.load} busy processes": args.load, "idle again": 0}
    rows, video = [], iter(frames[4:])
    for phase, load in phases.items():
        with competing_load(load):
            for _ in range(args.frames):
                r = stream.step(next(video))
                rows.append({"phase": phase, "k": r.k, "ms": r.timings["total"], "reset": r.reset})

    report_phases = {}
    print(f"{'phase':<22}{'frames':>7}{'within budget':>15}{'median ms':>11}{'mean K':>8}")
    for phase in phases:
        pruned = [r for r in rows if r["phase"] == phase and not r["reset"]]
        within = sum(r["ms"] <= budget.ms for r in pruned) / len(pruned)
        median = statistics.median(r["ms"] for r in pruned)
        mean_k = statistics.fmean(r["k"] for r in pruned)
        report_phases[phase] = {
            "frames": len(pruned),
            "within": within,
            "median_ms": median,
            "mean_k": mean_k,
        }
        print(f"{phase:<22}{len(pruned):>7}{100 * within:>14.1f}%{median:>11.1f}{mean_k:>8.1f}")
    pruned = [r for r in rows if not r["reset"]]
    overall = sum(r["ms"] <= budget.ms for r in pruned) / len(pruned)
    resets = [r["ms"] for r in rows if r["reset"]]
    print(
        f"all pruned frames within budget: {100 * overall:.1f}% ({len(pruned)} frames); "
        f"reset frames (dense): {len(resets)}"
    )

    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "model": args.model,
        "backend": "ort-cpu",
        "buckets": list(buckets),
        "budget_ms": budget.ms,
        "calibration_s": calibration_s,
        "baseline_ms": {str(b): ms for b, ms in budget.baseline.items()},
        "load_processes": args.load,
        "reset_every": args.reset_every,
        "within_budget": overall,
        "phases": report_phases,
        "frames": rows,
    }
    out.write_text(json.dumps(report, indent=1))
    plot(rows, budget.ms, list(phases), out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


def plot(rows: list[dict], budget_ms: float, phases: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_ms, ax_k) = plt.subplots(2, 1, sharex=True, figsize=(9, 5))
    x = range(len(rows))
    loaded = [i for i, r in enumerate(rows) if r["phase"] == phases[1]]
    ax_ms.plot(x, [r["ms"] for r in rows], lw=1, label="frame time")
    ax_ms.axhline(budget_ms, color="red", ls="--", lw=1, label=f"budget {budget_ms:.1f} ms")
    ax_ms.set_ylabel("ms per frame")
    ax_ms.legend(loc="upper right")
    ax_k.step(x, [r["k"] for r in rows], where="post", color="green")
    ax_k.set_ylabel("K kept")
    ax_k.set_xlabel("frame")
    for ax in (ax_ms, ax_k):
        if loaded:
            ax.axvspan(loaded[0] - 0.5, loaded[-1] + 0.5, color="orange", alpha=0.15, lw=0)
    ax_ms.set_title("latency budget: " + " | ".join(phases) + " (orange: competing load)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
