"""Export one pruned stage of a model at given K, float32 and static int8, for A/B timing of
the stage code (`benchmarks/stage_profile.py` times and profiles what this writes).

    python benchmarks/stage_graphs.py --model vitdet-b --size 672 --stage 1 --keep 512,64 \
        --out out/stages-before

Random weights (timing only). The int8 graphs are `quantize_graph`'s static Q/DQ lowering,
calibrated on random feeds from a fixed seed (the package path calibrates on video; for A/B
between two versions of the stage code both sides get the same feeds).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import onnx
import torch

from rgtp.export.onnx_graphs import example_inputs, export_graph
from rgtp.export.quantize import Int8Settings, quantize_graph
from rgtp.families import get_config
from rgtp.families.detection.detector import Detector
from rgtp.models.stages import stage_modules
from rgtp.package.plan import StagePlan


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vitdet-b")
    p.add_argument("--size", type=int, default=672)
    p.add_argument("--stage", type=int, default=1)
    p.add_argument("--keep", default="512,64", help="comma-separated K")
    p.add_argument("--calibration", type=int, default=4, help="random feeds for int8 scales")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()

    torch.manual_seed(0)
    detector = Detector(get_config(args.model, args.size)).eval()
    ks = [int(k) for k in args.keep.split(",")]
    plan = StagePlan.create(detector.cfg, ks, "per-global")
    module = stage_modules(plan.family.encoder(detector), plan)[args.stage]
    args.out.mkdir(parents=True, exist_ok=True)
    for k in ks:
        spec = plan.stage_spec(args.stage, k)
        t = time.perf_counter()
        # traced at B = 2: the batch axis stays symbolic (a size-1 trace would fix it)
        inputs = example_inputs(spec, k, plan.num_tokens, plan.prefix, batch=2)
        model = export_graph(module, spec, inputs)
        onnx.save(model, str(args.out / f"{spec.name}.onnx"))
        feeds = []
        for seed in range(args.calibration):
            g = torch.Generator().manual_seed(seed)
            feeds.append(
                {
                    t.name: (x if t.name == "keep" else torch.randn(x.shape, generator=g)).numpy()
                    for t, x in zip(spec.inputs, inputs, strict=True)
                }
            )
        int8 = quantize_graph(model, Int8Settings("static", per_channel=True), feeds)
        onnx.save(int8, str(args.out / f"{spec.name}_int8.onnx"))
        print(f"{spec.name}: exported and quantized in {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
