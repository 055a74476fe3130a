"""Resident memory of one stream over many frames: does it stay flat?

    python benchmarks/soak.py --frames 10000 [--package DIR] [--keep 77] [--every 500]

One stream of vitdet-small on ONNX Runtime (CPU), reset every 8 frames, runs --frames frames
of a held-out SynthVID video (played forward and back, so motion stays continuous). RSS is
read from /proc/self/statm every --every frames. Prints a table, writes out/bench/soak.json,
and says whether RSS at the first sample (frame --every) and at the last frame are within
2 % of each other. Without --package, the shipped weights are exported to a temporary
directory first, in a child process (about a minute).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from rgtp.core.selection import FixedKeep
from rgtp.runtime import Pipeline

MODEL = "vitdet-small"
FLAT = 0.02  # the soak's pass mark: RSS of the first sample and the last within 2 %


def rss_bytes() -> int:
    """Resident set size of this process now (Linux: /proc/self/statm, in pages)."""
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def export_shipped(k: int, out: Path) -> Path:
    """The shipped model exported with bucket k, in a child process, so that the export's
    memory is not in the soak's RSS."""
    export = ["export", "--model", MODEL, "--buckets", str(k), "--no-symbolic", "--quiet"]
    subprocess.run([sys.executable, "-m", "rgtp", *export, "--out", str(out)], check=True)
    return out


def video(size: int, length: int) -> Iterator[np.ndarray]:
    """A held-out SynthVID sequence, forward then backward, forever."""
    from rgtp.data.synthvid import SynthVIDConfig, generate_sequence, heldout_seeds

    seq = generate_sequence(heldout_seeds(1)[0], SynthVIDConfig(size=size, num_frames=length))
    frames = list(seq.frames)
    return itertools.cycle(frames + frames[-2:0:-1])


def soak(package: Path, frames: int, every: int, k: int) -> dict:
    pipe = Pipeline.load(package, "ort")
    stream = pipe.new_stream(policy=FixedKeep(k), reset_every=8)
    source = video(pipe.plan.config.backbone.img_size, 64)
    samples, window = [], []
    print(f"{'frame':>8}{'RSS MiB':>10}{'vs first':>10}{'ms/frame':>10}")
    start = time.perf_counter()
    for t in range(1, frames + 1):
        window.append(stream.step(next(source)).timings["total"])
        if t % every == 0 or t == frames:
            rss, ms = rss_bytes() / 2**20, statistics.fmean(window)
            samples.append({"frame": t, "rss_mib": rss, "ms_per_frame": ms})
            change = 100 * (rss / samples[0]["rss_mib"] - 1)
            print(f"{t:>8}{rss:>10.1f}{change:>9.2f}%{ms:>10.1f}")
            window = []
    first, last = samples[0]["rss_mib"], samples[-1]["rss_mib"]
    change = last / first - 1
    return {
        "model": MODEL,
        "backend": pipe.backend,
        "package": str(package),
        "frames": frames,
        "every": every,
        "k": k,
        "reset_every": 8,
        "stream_state_mib": stream.state.nbytes() / 2**20,
        "seconds": time.perf_counter() - start,
        "samples": samples,
        "first_vs_last": change,
        "flat": abs(change) <= FLAT,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=10_000)
    ap.add_argument("--every", type=int, default=500, help="frames between RSS samples")
    ap.add_argument("--keep", dest="k", type=int, default=77, help="K per pruned frame")
    ap.add_argument("--package", default=None, help="an exported vitdet-small package")
    ap.add_argument("--json", default="out/bench/soak.json")
    args = ap.parse_args()
    if args.frames < 1 or not 1 <= args.every <= args.frames:
        ap.error("need --frames >= 1 and 1 <= --every <= --frames")
    with tempfile.TemporaryDirectory(prefix="rgtp-soak-") as tmp:
        package = Path(args.package) if args.package else export_shipped(args.k, Path(tmp) / "pkg")
        report = soak(package, args.frames, args.every, args.k)
    change = 100 * report["first_vs_last"]
    verdict = "flat" if report["flat"] else "NOT flat"
    print(
        f"RSS frame {report['samples'][0]['frame']} -> {report['frames']}: "
        f"{report['samples'][0]['rss_mib']:.1f} -> {report['samples'][-1]['rss_mib']:.1f} MiB "
        f"({change:+.2f} %): {verdict} (within {100 * FLAT:.0f} %)"
    )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
