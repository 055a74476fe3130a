"""Which tokens static int8 keeps, against float32: the shipped vitdet-small on held-out
SynthVID at the demo's K, OpenVINO on static int8 (Q/DQ) packages with the convolutions
(patch embedding, head) lowered too, as `--precision int8 --int8-method static` exports, and
with the matmuls alone, against ONNX Runtime fp32.

    python benchmarks/int8_kept_tokens.py --json benchmarks/results/int8-kept-tokens-2026-12-07.json

Per configuration: the share of pruned steps whose kept set is exactly fp32's, and the mean
share of the K tokens both keep. Packages: `benchmarks/precision_accuracy.py`'s under `--out`
(exported, or quantized, where missing; static int8 calibrated on training video).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
from precision import INT8
from precision_accuracy import _equal_share, packages, shipped

from rgtp.core.selection import FixedKeep
from rgtp.data.synthvid import SynthVIDConfig, generate_sequence
from rgtp.export.quantized_package import ensure_int8
from rgtp.families.detection.tools.evaluate import heldout_split
from rgtp.runtime import Pipeline
from rgtp.runtime.calibration import record_feeds


def kept_sets(pipe: Pipeline, seqs, k: int) -> list[torch.Tensor | None]:
    """Every step's kept tokens (sorted), None on reset steps."""
    kept = []
    for seq in seqs:
        stream = pipe.new_stream(policy=FixedKeep(k))
        for frame in seq.frames:
            r = stream.step(frame)
            kept.append(None if r.reset else r.keep.sort().values)
    return kept


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("out/bench/precision-accuracy"))
    p.add_argument("--sequences", type=int, default=8)
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    model = shipped("vitdet-small")
    n = model.cfg.backbone.num_tokens
    k = round(0.3 * n)  # the demo's
    training = [generate_sequence(seed, SynthVIDConfig(num_frames=8)).frames for seed in (1, 2)]
    pkgs = packages(model, k, args.out / "vitdet-small", training)

    def calibrate():
        feeds = record_feeds(Pipeline.load(pkgs["fp32"], "ort"), training, per_graph=16)
        return feeds, "2 training videos (benchmarks/int8_kept_tokens.py)"

    matmuls = dataclasses.replace(INT8["int8-qdq"], op_types=("MatMul",))
    matmul_only = ensure_int8(
        pkgs["fp32"],
        args.out / "vitdet-small-int8-qdq-matmul",
        matmuls,
        progress=False,
        calibrate=calibrate,
    )
    configs = {
        "ort fp32": Pipeline.load(pkgs["fp32"], "ort"),
        "openvino int8 static (MatMul, Conv)": Pipeline.load(pkgs["int8-qdq"], "openvino"),
        "openvino int8 static (MatMul only)": Pipeline.load(matmul_only, "openvino"),
    }
    seqs = heldout_split(args.sequences, args.frames, 1, model.cfg.backbone.img_size)
    kept = {name: kept_sets(pipe, seqs, k) for name, pipe in configs.items()}
    reference = kept["ort fp32"]
    rows = []
    for name, sets in kept.items():
        pairs = [(a, b) for a, b in zip(sets, reference, strict=True) if a is not None]
        same = _equal_share(sets, reference)
        both = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in pairs) / (k * len(pairs))
        rows.append({"config": name, "k": k, "same_kept_set": same, "mean_overlap": both})
        print(f"{name:38s} same kept set {100 * same:5.1f} %   mean overlap {100 * both:5.1f} %")
    if args.json:
        report = {"date": time.strftime("%Y-%m-%d %H:%M"), "steps": len(pairs), "rows": rows}
        args.json.write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
