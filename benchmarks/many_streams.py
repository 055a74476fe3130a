"""Throughput of many camera streams on one pipeline: stepped one by one (`Stream.step`)
against batched (`Pipeline.step_many`, one engine call per stage and K for all streams).

    python benchmarks/many_streams.py --model vitdet-small --keep 77 --streams 1,4,8
    python benchmarks/many_streams.py --model vitdet-b --size 672 --keep 512 --streams 1,4,8

Every stream watches its own video and keeps K tokens a frame (`FixedKeep`); after the
first (dense) frame and one warm-up frame, `--frames` pruned frames of every stream are
timed. Frames per second count every stream's frames, the head included. Before timing,
the batched streams' detections and kept tokens are checked against the streams run one
by one (bit-identical). vitdet-small loads the shipped weights; other models are random
(only timing is measured). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import onnxruntime as ort
import torch
from backbone_timing import moving_frames

from rgtp.core.selection import FixedKeep
from rgtp.engines import LAYOUTS
from rgtp.export.ensure import ensure_package
from rgtp.families import get_config, shipped_weights
from rgtp.families.detection.checkpoints import load_weights
from rgtp.families.detection.detector import Detector
from rgtp.package.plan import StagePlan
from rgtp.runtime import Pipeline


def detector(model: str, size: int | None) -> Detector:
    torch.manual_seed(0)
    det = Detector(get_config(model, size)).eval()
    weights = shipped_weights(model)
    if weights is not None and size in (None, det.cfg.backbone.img_size):
        load_weights(det, weights)
    return det


def frames_per_second(
    pipe: Pipeline, k: int, videos: list[list], batched: bool, frames: int
) -> tuple[float, list]:
    """Frames per second over every stream's timed frames, and the last frame's results."""
    streams = [pipe.new_stream(policy=FixedKeep(k), reset_every=0) for _ in videos]

    def step(t: int) -> list:
        if batched:
            return pipe.step_many(streams, [v[t] for v in videos])
        return [s.step(v[t]) for s, v in zip(streams, videos, strict=True)]

    step(0)  # dense first frame
    step(1)  # warm-up of the pruned sessions
    start = time.perf_counter()
    for t in range(2, 2 + frames):
        results = step(t)
    if pipe.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return len(videos) * frames / seconds, results


def check_identical(pipe: Pipeline, k: int, videos: list[list], steps: int = 4) -> bool:
    alone = [pipe.new_stream(policy=FixedKeep(k), reset_every=0) for _ in videos]
    together = [pipe.new_stream(policy=FixedKeep(k), reset_every=0) for _ in videos]
    for t in range(steps):
        want = [s.step(v[t]) for s, v in zip(alone, videos, strict=True)]
        got = pipe.step_many(together, [v[t] for v in videos])
        for a, b in zip(got, want, strict=True):
            same = torch.equal(a.keep, b.keep) and all(
                torch.equal(getattr(a.detections, p), getattr(b.detections, p))
                for p in ("boxes", "scores", "labels")
            )
            if not same:
                return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="vitdet-small")
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--keep", type=int, default=77, help="K of every stream")
    ap.add_argument("--streams", default="1,4,8")
    ap.add_argument("--frames", type=int, default=6, help="timed frames per stream")
    ap.add_argument("--package", default=None, help="reuse/export the package here")
    ap.add_argument("--json", default="out/bench/many_streams.json")
    ap.add_argument(
        "--backend",
        default="ort",
        choices=("ort", "torch"),
        help="ort: the exported package on ONNX Runtime CPU; torch: the model in memory",
    )
    ap.add_argument("--device", default="cpu", help="torch backend: cpu or cuda")
    ap.add_argument(
        "--layout",
        default="per-stage",
        choices=LAYOUTS,
        help="ORT sessions: one per stage (weights packed once: batched = alone bit for bit) "
        "or one per (stage, K)",
    )
    args = ap.parse_args()
    counts = [int(s) for s in args.streams.split(",")]

    det = detector(args.model, args.size)
    cfg = det.cfg.backbone
    if args.backend == "torch":
        pipe = Pipeline.from_model(det, [args.keep], "per-global", device=args.device)
    else:
        plan = StagePlan.create(det.cfg, [args.keep], "per-global", max_batch=max(counts))
        package = ensure_package(det, plan, args.package, symbolic=args.layout == "per-stage")
        pipe = Pipeline.load(package, "ort", layout=args.layout)
    if max(counts) > pipe.plan.max_batch:
        raise SystemExit(f"at most {pipe.plan.max_batch} streams a call")
    videos = [moving_frames(args.frames + 2, cfg.img_size, seed=s) for s in range(max(counts))]
    identical = check_identical(pipe, args.keep, videos)
    rows = []
    for count in counts:
        one_by_one, _ = frames_per_second(pipe, args.keep, videos[:count], False, args.frames)
        together, _ = frames_per_second(pipe, args.keep, videos[:count], True, args.frames)
        rows.append(
            {
                "streams": count,
                "sequential_fps": one_by_one,
                "batched_fps": together,
                "speedup": together / one_by_one,
            }
        )
    report = {
        "model": args.model,
        "size": cfg.img_size,
        "num_tokens": cfg.num_tokens,
        "k": args.keep,
        "weights": "shipped" if shipped_weights(args.model) else "random",
        "backend": args.backend,
        "device": torch.cuda.get_device_name() if pipe.device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "ort_layout": args.layout if args.backend == "ort" else None,
        "prepacked_stages": pipe.engines.info.get("prepacked_stages"),
        "threads": torch.get_num_threads(),
        "timed_frames_per_stream": args.frames,
        "batched_identical_to_alone": identical,
        "rows": rows,
    }
    print(
        f"{args.model} @ {cfg.img_size} (N={cfg.num_tokens}), K = {args.keep}, "
        + (
            f"ONNX Runtime {ort.__version__} CPU ({args.layout} sessions)"
            if args.backend == "ort"
            else f"torch {torch.__version__} on {report['device']} (fp32, eager)"
        )
        + f", {torch.get_num_threads()} threads; frames per second over all "
        f"streams, head included; batched = alone, bit for bit: {identical}"
    )
    print(f"{'streams':>8}{'one by one':>12}{'batched':>10}{'speedup':>9}")
    for r in rows:
        print(
            f"{r['streams']:>8}{r['sequential_fps']:>12.1f}{r['batched_fps']:>10.1f}"
            f"{r['speedup']:>9.2f}"
        )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
