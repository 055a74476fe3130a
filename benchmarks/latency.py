"""Per-frame latency on ONNX Runtime, dense against pruned at the paper's K values.

    python benchmarks/latency.py --model vitdet-b --size 672 --keep 768,512,384,196,64

Timing follows the paper: "runtime = backbone plus rollout overhead" (the detection
neck/head is not pruned and is reported apart). The dense baseline is the plain dense
backbone exported as its own graph; pruned frames are the non-reset frames of a stream.
Beside every K: its FLOPs ratio (dense backbone MACs / pruned-frame MACs) in the paper's
convention (windowed blocks computed whole) and in the executed one (what rgtp runs,
`rgtp.families.detection.flops`), the measured speedup over each, the share of the pruned
frame spent outside engine calls (tracking, top-K, gathers, cache scatters, rollout), and the whole
frame's time with the head. Weights are random: only timing is measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from backbone_timing import BACKBONE_PARTS, OVERHEAD_PARTS, DenseBackbone, moving_frames

from rgtp.core.selection import FixedKeep
from rgtp.engines import LAYOUTS
from rgtp.export.ensure import ensure_package
from rgtp.export.onnx_graphs import export_graph
from rgtp.families import get_config
from rgtp.families.detection.detector import Detector
from rgtp.families.detection.flops import frame_macs
from rgtp.package.plan import GraphSpec, StagePlan, TensorSpec
from rgtp.runtime import Pipeline


def dense_baseline_ms(detector: Detector, frames: int, directory: Path) -> float:
    s = detector.cfg.backbone.img_size
    spec = GraphSpec(
        "dense",
        (TensorSpec("frame", (1, 3, s, s), "float32"),),
        (
            TensorSpec(
                "map",
                (detector.cfg.backbone.num_tokens, detector.cfg.backbone.embed_dim),
                "float32",
            ),
        ),
    )
    frame = torch.rand(1, 3, s, s) * 255
    model = export_graph(DenseBackbone(detector), spec, (frame,))
    path = directory / "dense.onnx"
    import onnx

    onnx.save(model, str(path), save_as_external_data=True, location="dense.weights")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"frame": frame.numpy()}
    sess.run(None, feed)  # warm-up
    times = []
    for _ in range(frames):
        start = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def stream_parts(pipe: Pipeline, k: int, frames: list[np.ndarray]) -> dict[str, float]:
    """Median ms per part over the pruned frames (frame 0 is the dense reset, frame 1 warms
    up this K's sessions)."""
    stream = pipe.new_stream(policy=FixedKeep(k), reset_every=0)
    results = [stream.step(f) for f in frames]
    timed = results[2:]
    parts = timed[0].timings.keys()
    return {p: statistics.median(r.timings[p] for r in timed) for p in parts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="vitdet-b")
    ap.add_argument("--size", type=int, default=672)
    ap.add_argument("--keep", dest="ks", default="768,512,384,196,64")
    ap.add_argument("--frames", type=int, default=7, help="frames per measurement")
    ap.add_argument("--package", default=None, help="reuse/export the package here")
    ap.add_argument("--buckets", default=None, help="buckets to export (default: --keep)")
    ap.add_argument("--json", default="out/bench/latency.json")
    ap.add_argument(
        "--layout",
        default="per-stage",
        choices=LAYOUTS,
        help="ORT sessions per (stage, K), or one per stage from the symbolic-K graph",
    )
    args = ap.parse_args()
    ks = [int(k) for k in args.ks.split(",")]

    torch.manual_seed(0)
    detector = Detector(get_config(args.model, args.size)).eval()
    cfg = detector.cfg.backbone
    buckets = [int(k) for k in args.buckets.split(",")] if args.buckets else ks
    plan = StagePlan.create(detector.cfg, buckets, "per-global")
    # the symbolic-K graphs only where the layout runs them
    package = ensure_package(detector, plan, args.package, symbolic=args.layout == "per-stage")
    pipe = Pipeline.load(package, "ort", layout=args.layout)
    frames = moving_frames(args.frames + 2, cfg.img_size)

    with tempfile.TemporaryDirectory() as tmp:
        dense_ms = dense_baseline_ms(detector, args.frames, Path(tmp))
    dense_macs = frame_macs(cfg).backbone
    reset = stream_parts(pipe, cfg.num_tokens, frames)  # K = N through the stage graphs
    rows = []
    for k in ks:
        parts = stream_parts(pipe, k, frames)
        backbone = sum(parts.get(p, 0.0) for p in BACKBONE_PARTS)
        overhead = sum(parts.get(p, 0.0) for p in OVERHEAD_PARTS)
        flops_ratio = dense_macs / frame_macs(cfg, k).backbone
        executed = frame_macs(cfg, k, convention="executed").backbone
        executed_ratio = frame_macs(cfg, convention="executed").backbone / executed
        speedup = dense_ms / backbone
        rows.append(
            {
                "k": k,
                "gflops": frame_macs(cfg, k).backbone / 1e9,
                "flops_ratio": flops_ratio,
                "executed_gflops": executed / 1e9,
                "executed_flops_ratio": executed_ratio,
                "backbone_ms": backbone,
                "speedup": speedup,
                "speedup_over_flops_ratio": speedup / flops_ratio,
                "speedup_over_executed_ratio": speedup / executed_ratio,
                "outside_engine_ms": overhead,
                "outside_engine_share": overhead / backbone,
                "head_ms": parts.get("head", 0.0),
                "frame_ms": parts["total"],
                "parts_ms": parts,
            }
        )
    report = {
        "model": args.model,
        "size": cfg.img_size,
        "num_tokens": cfg.num_tokens,
        "onnxruntime": ort.__version__,
        "ort_layout": args.layout,
        "threads": torch.get_num_threads(),
        "dense_backbone_ms": dense_ms,
        "dense_gflops": dense_macs / 1e9,
        "reset_frame_backbone_ms": sum(reset.get(p, 0.0) for p in BACKBONE_PARTS),
        "pruned": rows,
    }
    print(
        f"{args.model} @ {cfg.img_size} (N={cfg.num_tokens}) on ONNX Runtime "
        f"{ort.__version__} CPU: dense backbone {dense_ms:.0f} ms "
        f"({dense_macs / 1e9:.1f} GFLOPs); reset frame through the stage graphs "
        f"{report['reset_frame_backbone_ms']:.0f} ms"
    )
    print("FLOPs x: dense / pruned backbone MACs, paper convention (whole windows) and executed")
    print(
        f"{'K':>6}{'GFLOPs':>9}{'FLOPs x':>9}{'exec x':>8}{'ms':>8}{'speedup':>9}"
        f"{'/FLOPs x':>10}{'/exec x':>9}{'outside %':>11}{'head ms':>9}{'frame ms':>10}"
    )
    for r in rows:
        print(
            f"{r['k']:>6}{r['gflops']:>9.1f}{r['flops_ratio']:>9.2f}"
            f"{r['executed_flops_ratio']:>8.2f}{r['backbone_ms']:>8.0f}{r['speedup']:>9.2f}"
            f"{r['speedup_over_flops_ratio']:>10.2f}{r['speedup_over_executed_ratio']:>9.2f}"
            f"{100 * r['outside_engine_share']:>11.1f}{r['head_ms']:>9.0f}{r['frame_ms']:>10.0f}"
        )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
