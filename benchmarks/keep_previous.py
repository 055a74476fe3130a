"""The authors' 1024-px importance mixing (`PruningConfig.keep_previous`) on and off, on the
shipped vitdet-small, whose rollout is unpooled as theirs is at 1024 px: held-out SynthVID,
reset every 8, r = 1, ONNX Runtime (packages exported to a temporary folder) or torch
engines on the CPU. Prints the table and writes JSON.

    python benchmarks/keep_previous.py [--keep 77,48] [--sequences 30] [--frames 64]
        [--backend ort] [--json out/bench/keep-previous.json]

(benchmarks/results/keep-previous-vitdet-small-2026-12-07.json: `--sequences 8`, the demo's
held-out split, about 24 min on the shared 2-core machine.)

Two pairs, each the same settings with mixing off and on: rgtp's shipped pruning (pruning at
the input), and the authors' preset at unpooled rollout (`PruningConfig.paper(size,
rollout_pool=1)`, pruning after block 0's attention as they do). Beside mAP50, each pair's
two runs are compared frame by frame over the pruned (non-reset) frames: the share whose
kept tokens differ, and the mean L1 distance between the two final importance maps (each
sums to 1, so the distance lies in [0, 2]). Both runs see the same frames, each its own
stream, so a difference at one frame carries into the next through tracking.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rgtp.cli.options import add_heldout_videos
from rgtp.engines.torch_backend import torch_engines
from rgtp.export.ensure import ensure_package
from rgtp.families.detection.tools.evaluate import EvalSetting, evaluate
from rgtp.families.loading import load_model
from rgtp.models.config import PruningConfig
from rgtp.package.plan import StagePlan
from rgtp.runtime import Pipeline


@dataclasses.dataclass
class Step:
    """What one pruned-or-reset step chose: kept token indices (K,), sorted, and the final
    importance map (N,) the next frame tracks."""

    reset: bool
    keep: torch.Tensor
    importance: torch.Tensor


class RecordingStream:
    """A stream that keeps every step's `Step` (the shared evaluator runs it unchanged)."""

    def __init__(self, stream: Any, steps: list[Step]) -> None:
        self._stream, self._steps = stream, steps

    def step(self, frame: np.ndarray) -> Any:
        r = self._stream.step(frame)
        self._steps.append(Step(r.reset, r.keep.sort().values, r.importance.detach().clone()))
        return r

    def __getattr__(self, name: str) -> Any:  # `pruning` and the rest: the stream's own
        return getattr(self._stream, name)


class RecordingPipeline:
    """A pipeline whose new streams record into `steps` (cleared by the caller per run)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline, self.steps = pipeline, []

    @property
    def plan(self) -> StagePlan:
        return self.pipeline.plan

    @property
    def backend(self) -> str:
        return self.pipeline.backend

    def new_stream(self, **options: Any) -> RecordingStream:
        return RecordingStream(self.pipeline.new_stream(**options), self.steps)


def compare(off: list[Step], on: list[Step]) -> dict[str, float]:
    """Frame-by-frame difference of two runs over the same frames: of the steps pruned in
    both, the share whose kept sets differ and the mean L1 distance between the importance
    maps."""
    pairs = [(a, b) for a, b in zip(off, on, strict=True) if not (a.reset or b.reset)]
    differ = sum(not torch.equal(a.keep, b.keep) for a, b in pairs)
    l1 = [float((a.importance - b.importance).abs().sum()) for a, b in pairs]
    return {
        "pruned_frames": len(pairs),
        "kept_differ_share": differ / len(pairs),
        "importance_l1_mean": statistics.fmean(l1),
        "importance_l1_max": max(l1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", default="77,48", help="comma-separated K")
    add_heldout_videos(ap)
    ap.add_argument("--backend", choices=("ort", "torch"), default="ort")
    ap.add_argument("--threads", type=int, default=None, help="ORT and torch threads")
    ap.add_argument("--json", default="out/bench/keep-previous.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ks = [int(k) for k in args.keep.split(",")]

    detector = load_model("vitdet-small").model.eval()
    cfg = detector.cfg
    size = cfg.backbone.img_size
    shipped = cfg.pruning
    paper = PruningConfig.paper(size, rollout_pool=1)
    if shipped.rollout_pool != 1 or not paper.keep_previous:
        raise SystemExit("expected unpooled rollout in both settings (the mixing's condition)")
    pairs = {  # name: (pruning from, settings without mixing, with mixing)
        "shipped": ("input", shipped, dataclasses.replace(shipped, keep_previous=True)),
        "paper, unpooled": ("block0-mlp", dataclasses.replace(paper, keep_previous=False), paper),
    }
    rows, started, pipes = [], time.perf_counter(), {}
    with tempfile.TemporaryDirectory() as tmp:
        for prune_from in ("input", "block0-mlp"):
            # attention rows of every global block: the paper's settings roll out through all
            plan = StagePlan.create(
                cfg, ks, prune_from=prune_from, rollout_blocks=cfg.backbone.global_blocks
            )
            if args.backend == "torch":
                pipe = Pipeline(torch_engines(detector, plan))
            else:
                pkg = ensure_package(
                    detector, plan, Path(tmp) / prune_from, symbolic=False, progress=False
                )
                pipe = Pipeline.load(pkg, backend="ort", threads=args.threads)
            pipes[prune_from] = RecordingPipeline(pipe)
        for k in ks:
            for name, (prune_from, off, on) in pairs.items():
                pipe, runs = pipes[prune_from], {}
                for mixing, pruning in (("off", off), ("on", on)):
                    pipe.steps = []
                    (rec,) = evaluate(
                        pipe, [EvalSetting(k, pruning=pruning)], args.sequences, args.frames
                    )
                    runs[mixing] = (rec, pipe.steps)
                row = {
                    "k": k,
                    "settings": name,
                    "prune_from": prune_from,
                    "map50_off": 100 * runs["off"][0].map50,
                    "map50_on": 100 * runs["on"][0].map50,
                    "gflops": runs["off"][0].gflops,
                    **compare(runs["off"][1], runs["on"][1]),
                    "records": {m: r.to_dict() for m, (r, _) in runs.items()},
                }
                rows.append(row)
                print(_line(row), flush=True)
                # after every pair: a run stopped early keeps the pairs it finished
                write_json(Path(args.json), rows, args, time.perf_counter() - started)
    print(_table(rows, args))
    print(f"wrote {args.json}")


def write_json(path: Path, rows: list[dict], args: argparse.Namespace, seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "model": "vitdet-small",
        "backend": f"{args.backend} (CPU)",
        "sequences": args.sequences,
        "frames": args.frames,
        "reset_every": EvalSetting().reset_every,
        "radius": EvalSetting().radius,
        "rows": rows,
        "table": _table(rows, args),
        "seconds": seconds,
    }
    path.write_text(json.dumps(result, indent=1))


def _line(row: dict) -> str:
    return (
        f"K={row['k']:<4}{row['settings']:<17}mAP50 off {row['map50_off']:6.2f}  on "
        f"{row['map50_on']:6.2f}  kept differ {100 * row['kept_differ_share']:5.1f} %  "
        f"|dimportance| {row['importance_l1_mean']:.4f}"
    )


def _table(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"| vitdet-small ({args.sequences} x {args.frames}) | K | pruning from "
        "| mAP50, recompute (rgtp) | mAP50, keep previous (authors) | frames whose kept "
        "tokens differ | mean L1 between importance maps |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['settings']} | {r['k']} | {r['prune_from']} | {r['map50_off']:.2f} | "
            f"{r['map50_on']:.2f} | {100 * r['kept_differ_share']:.1f} % | "
            f"{r['importance_l1_mean']:.4f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
