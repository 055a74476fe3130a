"""The GPU path: ViTDet-B on the torch-CUDA backend, dense backbone against pruned frames, in
float32 and float16, eager and replayed as CUDA graphs (issue 15).

    python benchmarks/gpu.py --json out/bench/gpu.json

Defaults are the paper's Fig. 6 setting and ours: 1024 px at K = 2200, 750, 400, 75 and
672 px at K = 768, 512, 64. Weights are random (only timing is measured); frames are a
texture moving a few pixels a frame. Per configuration: backbone ms (the paper's runtime:
embed, token selection, stages, scatters, rollout; the neck and head are reported apart),
speedup over the dense backbone in the same precision and mode, the FLOPs ratio in the
paper's count, the share of the pruned backbone spent outside engine calls, host
synchronisations per pruned frame, and peak GPU memory. Part times come from CUDA events
(`runtime.timing`); frame times from the wall clock, synchronised once per frame.

Before timing, the same frames run through a CPU float32 reference stream and the GPU
streams, and the kept indices and maintained outputs are compared (`--check-size`).
Everything runs on PyTorch alone: nothing is exported. Made to finish in one run of a few
minutes on a fresh machine with only PyTorch (CUDA) installed beside rgtp's own
dependencies.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from backbone_timing import BACKBONE_PARTS, OVERHEAD_PARTS, DenseBackbone, moving_frames

from rgtp.core.selection import FixedKeep
from rgtp.engines.torch_backend import PRECISIONS
from rgtp.families import get_config
from rgtp.families.detection.detector import Detector
from rgtp.families.detection.flops import frame_macs
from rgtp.runtime import Pipeline

DEFAULT_PLANS = ("1024:2200,750,400,75", "672:768,512,64")
# float16 against the float32 reference on the same frames: maintained output within 2 % of
# its largest magnitude, and at least 90 % of the kept tokens the same (top-K ties in half
# precision flip tokens at the margin; they must stay a few).
FP16_MAP_TOL = 2e-2
FP16_KEEP_OVERLAP = 0.9


@dataclass(frozen=True)
class Setting:
    size: int
    precision: str
    graphs: bool

    @property
    def mode(self) -> str:
        return "cuda-graphs" if self.graphs else "eager"


def random_detector(size: int) -> Detector:
    """ViTDet-B at `size` with random weights at the scale trained ViTs have (linear layers
    ~ N(0, 0.02), as ViT/MAE initialise): PyTorch's default init lets the residual stream
    of 12 random blocks overflow float16."""
    torch.manual_seed(0)
    detector = Detector(get_config("vitdet-b", size)).eval()
    for m in detector.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)
    return detector


def parse_plans(texts: list[str]) -> list[tuple[int, list[int]]]:
    out = []
    for text in texts:
        size, ks = text.split(":")
        out.append((int(size), [int(k) for k in ks.split(",")]))
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def dense_backbone_ms(
    detector: Detector, frame: torch.Tensor, setting: Setting, device: torch.device, reps: int
) -> float:
    """Median ms of the plain dense backbone (pixels to map) in the setting's precision,
    eager or one CUDA graph."""
    dtype = PRECISIONS[setting.precision]
    model = DenseBackbone(copy.deepcopy(detector)).to(device=device, dtype=dtype).eval()
    x = frame.to(device=device, dtype=dtype)
    with torch.inference_mode():
        run = lambda: model(x)  # noqa: E731
        for _ in range(2):
            run()
        if setting.graphs:
            graph = torch.cuda.CUDAGraph()
            sync(device)
            with torch.cuda.graph(graph):
                model(x)
            run = graph.replay
            run()
        times = []
        for _ in range(reps):
            sync(device)
            start = time.perf_counter()
            run()
            sync(device)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def forget_graphs(pipe: Pipeline) -> None:
    """Drop the captured graphs of every engine, so that a setting's peak memory is its
    own."""
    engines = pipe.engines
    every = [e for stage in engines.stages for e in stage.values()]
    every += [engines.embed, engines.head, *engines.extra.values()]
    for engine in every:
        graphs = getattr(engine, "graphs", None)
        if graphs is not None:
            graphs.clear()


def count_syncs(step) -> int:
    """Host synchronisations while `step()` runs (torch's sync debug mode warns on each)."""
    if not torch.cuda.is_available():
        return 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def pruned_parts(
    pipe: Pipeline, k: int, frames: list[np.ndarray], device: torch.device, warmup: int
) -> dict[str, float]:
    """Median ms per part and per frame over the pruned frames of one stream (frame 0 is
    the dense reset; `warmup` pruned frames capture this K's graphs first)."""
    stream = pipe.new_stream(policy=FixedKeep(k), reset_every=0)
    for f in frames[: 1 + warmup]:
        stream.step(f)
    parts: list[dict[str, float]] = []
    walls = []
    for f in frames[1 + warmup : -1]:
        sync(device)
        start = time.perf_counter()
        result = stream.step(f)
        sync(device)
        walls.append((time.perf_counter() - start) * 1e3)
        parts.append(result.timings)
    out = {p: statistics.median(t[p] for t in parts) for p in parts[0]}
    out["frame_wall"] = statistics.median(walls)
    out["syncs"] = float(count_syncs(lambda: stream.step(frames[-1])))
    return out


def compare_to_cpu(
    detector: Detector, size: int, k: int, frames: list[np.ndarray], device: torch.device
) -> list[dict]:
    """Kept indices and maintained outputs of GPU streams against a CPU float32 stream on the
    same frames (a dense first step, then pruned at k)."""

    def run(dev: str | torch.device, precision: str = "fp32", graphs: bool = False):
        pipe = Pipeline.from_model(
            detector, [k], device=dev, precision=precision, cuda_graphs=graphs
        )
        stream = pipe.new_stream(policy=FixedKeep(k), reset_every=0)
        steps = []
        for f in frames:
            r = stream.step(f)
            steps.append((r.keep, stream.out_map.float().cpu().clone()))
        return steps

    reference = run("cpu")
    rows = []
    for precision, graphs in (("fp32", False), ("fp32", True), ("fp16", True)):
        if graphs and device.type != "cuda":
            continue
        try:
            got = run(device, precision, graphs)
        except Exception as e:
            traceback.print_exc()
            rows.append({"precision": precision, "graphs": graphs, "error": repr(e)})
            continue
        overlaps, errors = [], []
        for (keep_ref, map_ref), (keep, fmap) in zip(reference, got, strict=True):
            both = np.intersect1d(keep_ref.numpy(), keep.numpy())
            overlaps.append(both.size / keep_ref.numel())
            # rows both streams computed this step (a token kept by one only holds a fresh
            # feature in one map and a stale one in the other)
            common = torch.from_numpy(both)
            diff = (fmap[common] - map_ref[common]).abs().max() / map_ref[common].abs().max()
            errors.append(float(diff))
        fp16 = precision == "fp16"
        ok = min(overlaps) >= (FP16_KEEP_OVERLAP if fp16 else 1.0) and max(errors) <= (
            FP16_MAP_TOL if fp16 else 1e-4
        )
        rows.append(
            {
                "size": size,
                "k": k,
                "precision": precision,
                "mode": "cuda-graphs" if graphs else "eager",
                "steps": len(frames),
                "min_keep_overlap": min(overlaps),
                "same_keep_steps": sum(o == 1.0 for o in overlaps),
                "max_rel_map_error": max(errors),
                "within_tolerance": bool(ok),
            }
        )
        print(
            f"  check {precision} {rows[-1]['mode']:>11} vs CPU fp32 @ {size} K={k}: kept "
            f"tokens equal on {rows[-1]['same_keep_steps']}/{len(frames)} steps (min overlap "
            f"{min(overlaps):.3f}), map error {max(errors):.2e} of its max: "
            f"{'ok' if ok else 'OUTSIDE TOLERANCE'}",
            flush=True,
        )
    return rows


def attempt(report: dict, label: str, work, *args, **kwargs):
    """`work(*args, **kwargs)`, or None with its error printed and kept in
    `report["errors"]`: one broken setting must not cost the run's other figures."""
    try:
        return work(*args, **kwargs)
    except Exception as e:
        traceback.print_exc()
        report["errors"].append(f"{label}: {e!r}")
        return None


def run_benchmark(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    plans = parse_plans(args.plan)
    report: dict = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "frames": args.frames,
        "check": [],
        "dense": [],
        "pruned": [],
        "errors": [],
    }
    print(f"rgtp GPU benchmark on {report['device']}, torch {torch.__version__}", flush=True)
    torch.manual_seed(0)
    if args.check_size:
        size, k = args.check_size, args.check_keep
        detector = random_detector(size)
        frames = moving_frames(args.check_frames, size)
        try:
            report["check"] = compare_to_cpu(detector, size, k, frames, device)
        except Exception as e:  # keep the timing even when the check breaks
            traceback.print_exc()
            report["errors"].append(f"check: {e!r}")
        del detector

    modes = [m == "cuda-graphs" for m in args.modes.split(",")]
    for size, ks in plans:
        detector = random_detector(size)
        cfg = detector.cfg.backbone
        frames = moving_frames(args.frames + args.warmup + 2, size)
        pixels = torch.from_numpy(frames[0]).permute(2, 0, 1)[None].float()
        dense_macs = frame_macs(cfg).backbone
        for precision in args.precisions.split(","):
            for graphs in modes:
                setting = Setting(size, precision, graphs)
                label = f"{size} px {precision} {setting.mode}"
                dense = attempt(
                    report,
                    f"dense {label}",
                    dense_backbone_ms,
                    detector,
                    pixels,
                    setting,
                    device,
                    args.frames,
                )
                if dense is None:
                    continue
                report["dense"].append({**setting.__dict__, "mode": setting.mode, "ms": dense})
                print(f"{label}: dense backbone {dense:.2f} ms", flush=True)
                print(
                    f"{'K':>6}{'FLOPs x':>9}{'bb ms':>9}{'speedup':>9}{'outside %':>11}"
                    f"{'head ms':>9}{'frame ms':>10}{'syncs':>7}{'peak GiB':>10}",
                    flush=True,
                )
                pipe = attempt(
                    report,
                    f"engines {label}",
                    Pipeline.from_model,
                    detector,
                    ks,
                    device=device,
                    precision=precision,
                    cuda_graphs=graphs,
                )
                if pipe is None:
                    continue
                for k in ks:
                    forget_graphs(pipe)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                        torch.cuda.reset_peak_memory_stats(device)
                    parts = attempt(
                        report,
                        f"pruned {label} K={k}",
                        pruned_parts,
                        pipe,
                        k,
                        frames,
                        device,
                        args.warmup,
                    )
                    if parts is None:
                        continue
                    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
                    backbone = sum(parts.get(p, 0.0) for p in BACKBONE_PARTS)
                    outside = sum(parts.get(p, 0.0) for p in OVERHEAD_PARTS)
                    row = {
                        **setting.__dict__,
                        "mode": setting.mode,
                        "k": k,
                        "num_tokens": cfg.num_tokens,
                        "flops_ratio": dense_macs / frame_macs(cfg, k).backbone,
                        "dense_backbone_ms": dense,
                        "backbone_ms": backbone,
                        "speedup": dense / backbone,
                        "outside_engine_ms": outside,
                        "outside_engine_share": outside / backbone,
                        "head_ms": parts.get("head", 0.0),
                        "frame_wall_ms": parts["frame_wall"],
                        "syncs_per_frame": parts["syncs"],
                        "peak_gib": peak / 2**30,
                        "parts_ms": parts,
                    }
                    report["pruned"].append(row)
                    print(
                        f"{k:>6}{row['flops_ratio']:>9.2f}{backbone:>9.2f}"
                        f"{row['speedup']:>9.2f}{100 * row['outside_engine_share']:>11.1f}"
                        f"{row['head_ms']:>9.2f}{row['frame_wall_ms']:>10.2f}"
                        f"{int(parts['syncs']):>7}{row['peak_gib']:>10.2f}",
                        flush=True,
                    )
                del pipe
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        del detector
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--plan",
        action="append",
        help="SIZE:K,K,... (repeatable); default: " + " ".join(DEFAULT_PLANS),
    )
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precisions", default="fp32,fp16")
    ap.add_argument("--modes", default="eager,cuda-graphs")
    ap.add_argument("--frames", type=int, default=15, help="timed pruned frames per setting")
    ap.add_argument("--warmup", type=int, default=3, help="pruned frames before timing")
    ap.add_argument("--check-size", type=int, default=672, help="0: no CPU comparison")
    ap.add_argument("--check-keep", type=int, default=512)
    ap.add_argument("--check-frames", type=int, default=6)
    ap.add_argument("--json", default="out/bench/gpu.json")
    args = ap.parse_args(argv)
    args.plan = args.plan or list(DEFAULT_PLANS)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu for a dry run", file=sys.stderr)
        return 2
    if not args.device.startswith("cuda") and "cuda-graphs" in args.modes:
        args.modes = "eager"
    start = time.perf_counter()
    report = run_benchmark(args)
    report["minutes"] = (time.perf_counter() - start) / 60
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.json} ({report['minutes']:.1f} min; {len(report['errors'])} errors)")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
