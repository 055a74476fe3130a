"""Accuracy per precision on the shipped models' held-out benchmarks.

    python benchmarks/precision_accuracy.py

vitdet-small mAP50 (the demo's 8 held-out SynthVID sequences x 64 frames) and vivit-small
top-1 (the demo's 60 held-out SynthMotion clips), dense and pruned at the demo's K (77 and
26), for every backend x precision available: ONNX Runtime fp32 and int8 (the package's
graphs quantized, `rgtp export --precision int8`; "int8-qdq": static Q/DQ calibrated on
training video), OpenVINO f32, bf16 and int8 (the Q/DQ graphs). Beside
each pruned figure: the share of pruned steps whose kept tokens are exactly fp32 ORT's (the
runtime's own arithmetic is float32 everywhere; only the graphs' numbers differ).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from precision import CONFIGS as TIMED
from precision import INT8

from rgtp.core.selection import FixedKeep
from rgtp.data.coco import sequences_to_coco
from rgtp.data.synthmotion import generate_clip
from rgtp.data.synthvid import CLASSES, SynthVIDConfig, generate_sequence
from rgtp.engines import BACKENDS
from rgtp.export.ensure import ensure_package
from rgtp.export.quantized_package import ensure_int8
from rgtp.families import get_config, shipped_weights
from rgtp.families.classification.data import data_config, heldout_clips
from rgtp.families.detection.tools.coco_map import detections_to_coco, map50
from rgtp.families.detection.tools.evaluate import heldout_split
from rgtp.package.family import family_of
from rgtp.package.plan import StagePlan
from rgtp.runtime import Pipeline
from rgtp.runtime.calibration import record_feeds

# precision.py's configurations and int8 settings; torch's bf16 is left out (OpenVINO's
# gives bf16's accuracy, and torch emulates bf16 slowly on a CPU without it)
CONFIGS = [c for c in TIMED if c[0] != "torch"]


def shipped(name: str) -> torch.nn.Module:
    cfg = get_config(name)
    family = family_of(cfg)
    model = family.build(cfg)
    family.load_weights(model, shipped_weights(name))
    return model.eval()


def packages(
    model: torch.nn.Module, k: int, directory: Path, calibration: list[list[np.ndarray]]
) -> dict[str, Path]:
    """The model's float32 package at bucket k (exported or reused) and its int8 siblings
    (static int8 calibrated on the `calibration` videos)."""
    plan = StagePlan.create(model.cfg, [k], "per-global")
    fp32 = ensure_package(model, plan, directory, symbolic=False)

    def calibrate() -> tuple[dict, str]:
        feeds = record_feeds(Pipeline.load(fp32, "ort"), calibration, per_graph=16)
        return feeds, f"{len(calibration)} training videos (benchmarks/precision_accuracy.py)"

    out = {"fp32": fp32}
    for name, settings in INT8.items():
        sibling = directory.with_name(f"{directory.name}-{name}")
        out[name] = ensure_int8(fp32, sibling, settings, progress=False, calibrate=calibrate)
    return out


def pipeline(pkgs: dict[str, Path], backend: str, precision: str) -> Pipeline:
    if backend == "ort":
        return Pipeline.load(pkgs[precision], "ort")
    if precision in INT8:  # OpenVINO runs the Q/DQ graphs' int8 itself
        return Pipeline.load(pkgs[precision], backend)
    return Pipeline.load(pkgs["fp32"], backend, precision=precision)


def detector_rows(
    configs: list[tuple[str, str]], out: Path, sequences: int = 8, frames: int = 64
) -> list[dict]:
    model = shipped("vitdet-small")
    n = model.cfg.backbone.num_tokens
    k = round(0.3 * n)  # the demo's
    training = [generate_sequence(seed, SynthVIDConfig(num_frames=8)).frames for seed in (1, 2)]
    pkgs = packages(model, k, out / "vitdet-small", training)
    seqs = heldout_split(sequences, frames, 1, model.cfg.backbone.img_size)
    truth = sequences_to_coco(seqs, CLASSES)
    rows, reference = [], None
    for backend, precision in configs:
        pipe = pipeline(pkgs, backend, precision)
        row = {"model": "vitdet-small", "backend": backend, "precision": precision, "k": k}
        for name, keep in (("dense", n), ("pruned", k)):
            results, kept, image = [], [], 0
            for seq in seqs:
                stream = pipe.new_stream(policy=FixedKeep(keep))
                for frame in seq.frames:
                    r = stream.step(frame)
                    image += 1
                    results += detections_to_coco(image, r.detections)
                    kept.append(None if r.reset else r.keep.sort().values)
            row[f"map50_{name}"] = 100 * map50(truth, results)
            if name == "pruned":
                reference = reference or kept
                row["kept_equal_share"] = _equal_share(kept, reference)
        rows.append(row)
        print(_line(row, "map50"), flush=True)
    return rows


def classifier_rows(configs: list[tuple[str, str]], out: Path, clips: int = 60) -> list[dict]:
    model = shipped("vivit-small")
    n = model.cfg.spatial.num_tokens
    k = round(0.4 * n)  # the demo's
    training = [generate_clip(seed, data_config(model.cfg)).frames for seed in (1, 2, 3, 4)]
    pkgs = packages(model, k, out / "vivit-small", training)
    held_out = heldout_clips(clips, data_config(model.cfg))
    rows, reference = [], None
    for backend, precision in configs:
        pipe = pipeline(pkgs, backend, precision)
        row = {"model": "vivit-small", "backend": backend, "precision": precision, "k": k}
        for name, keep in (("dense", None), ("pruned", k)):
            right, kept = 0, []
            for clip in held_out:
                stream = pipe.new_stream(policy=None if keep is None else FixedKeep(keep))
                results = [r for r in map(stream.step, clip.frames) if r is not None]
                right += int(results[-1].label == clip.label)
                kept += [None if r.reset else r.keep.sort().values for r in results]
            row[f"top1_{name}"] = 100 * right / len(held_out)
            if name == "pruned":
                reference = reference or kept
                row["kept_equal_share"] = _equal_share(kept, reference)
        rows.append(row)
        print(_line(row, "top1"), flush=True)
    return rows


def _equal_share(kept: list, reference: list) -> float:
    """Of the pruned (non-reset) steps, the share keeping exactly the reference's tokens."""
    pairs = [(a, b) for a, b in zip(kept, reference, strict=True) if a is not None]
    return sum(bool(torch.equal(a, b)) for a, b in pairs) / len(pairs)


def _line(row: dict, metric: str) -> str:
    return (
        f"{row['model']:<13}{row['backend']:<9}{row['precision']:<9}"
        f"{metric} dense {row[f'{metric}_dense']:6.2f}  K={row['k']} {row[f'{metric}_pruned']:6.2f}"
        f"  kept = fp32's on {100 * row['kept_equal_share']:5.1f}% of pruned steps"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="out/bench/precision-accuracy")
    ap.add_argument("--json", default="out/bench/precision-accuracy.json")
    ap.add_argument("--sequences", type=int, default=8, help="held-out SynthVID sequences")
    ap.add_argument("--frames", type=int, default=64, help="frames per sequence")
    ap.add_argument("--clips", type=int, default=60, help="held-out SynthMotion clips")
    ap.add_argument("--models", default="vitdet-small,vivit-small", help="shipped models to score")
    ap.add_argument(
        "--configs",
        default=None,
        help="backend:precision pairs (default: every available one); the first is the "
        "reference of the kept-token comparison",
    )
    args = ap.parse_args()
    configs = [tuple(c.split(":")) for c in args.configs.split(",")] if args.configs else CONFIGS
    configs = [c for c in configs if c[0] in BACKENDS]
    start = time.perf_counter()
    out = Path(args.out)
    models = args.models.split(",")
    rows = (
        detector_rows(configs, out, args.sequences, args.frames) if "vitdet-small" in models else []
    )
    rows += classifier_rows(configs, out, args.clips) if "vivit-small" in models else []
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "threads": torch.get_num_threads(),
        "rows": rows,
        "seconds": time.perf_counter() - start,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.json} in {report['seconds']:.0f} s")


if __name__ == "__main__":
    main()
