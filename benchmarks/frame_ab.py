"""Backbone time of a pruned frame from two or more packages on one backend, interleaved.

    python benchmarks/frame_ab.py out/bench/before-int8-qdq out/bench/after-int8-qdq \
        --keep 512,64 --rounds 3 --backend openvino

The A/B of a change to the stage graphs at the level a user sees: each round, for each K,
each package runs the same moving frames (`backbone_timing.moving_frames`; the first is
the dense reset, the second warms this K) in turn, so that load on a shared machine falls
on all alike. Prints the median backbone time a frame (the paper's parts: embed, select,
stages, scatter, rollout) and each part's median, per package and K, and the load average
after each round. Weights are the packages' own; only timing is measured.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

from backbone_timing import BACKBONE_PARTS, moving_frames

from rgtp.core.selection import FixedKeep
from rgtp.runtime import Pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("packages", type=Path, nargs="+")
    ap.add_argument("--keep", default="512,64", help="comma-separated K")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--frames", type=int, default=7, help="pruned frames timed a round")
    ap.add_argument("--backend", default="openvino")
    args = ap.parse_args()
    ks = [int(k) for k in args.keep.split(",")]

    pipes = {p: Pipeline.load(p, args.backend) for p in args.packages}
    size = next(iter(pipes.values())).plan.config.backbone.img_size
    frames = moving_frames(args.frames + 2, size)
    timings: dict[tuple[Path, int], list[dict[str, float]]] = {
        (p, k): [] for p in pipes for k in ks
    }
    for r in range(args.rounds):
        for k in ks:
            for p, pipe in pipes.items():
                stream = pipe.new_stream(policy=FixedKeep(k), reset_every=0)
                results = [stream.step(f) for f in frames]
                timings[p, k] += [
                    {part: res.timings.get(part, 0.0) for part in BACKBONE_PARTS}
                    for res in results[2:]
                ]
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"round {r + 1}/{args.rounds} done, load average {load}", flush=True)
    for (p, k), rows in timings.items():
        backbone = statistics.median(sum(row.values()) for row in rows)
        parts = ", ".join(
            f"{part} {statistics.median(row[part] for row in rows):.1f}" for part in BACKBONE_PARTS
        )
        print(f"{p.name:36s} K = {k:4d}: backbone {backbone:6.1f} ms ({parts})")


if __name__ == "__main__":
    main()
