"""The authors' exact settings on the shipped model: the paper preset (PruningConfig.paper),
rollout pooled 2 x 2 or unpooled, pruning at the input or after block 0's attention, against
the model's own settings; held-out SynthVID, K = 77, ONNX Runtime CPU. Prints the table,
writes JSON and Markdown, and the attention-row buffer memory pooling saves.

    python benchmarks/paper_preset.py [--sequences 30] [--frames 64] [--out out/eval]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import torch

from rgtp.cli.options import add_heldout_videos
from rgtp.export.ensure import ensure_package
from rgtp.families.detection.tools.evaluate import EvalSetting, evaluate
from rgtp.families.loading import load_model
from rgtp.models.config import PruningConfig
from rgtp.package.plan import StagePlan
from rgtp.runtime import Pipeline


def attention_row_mib(pipe: Pipeline, pruning: PruningConfig) -> float:
    state = pipe.new_stream(pruning=pruning).state
    return sum(t.numel() * t.element_size() for t in state.attn_rows.values()) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", dest="k", type=int, default=77)
    add_heldout_videos(ap)
    ap.add_argument("--out", default="out/eval")
    ap.add_argument("--threads", type=int, default=None, help="ORT and torch threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    detector = load_model("vitdet-small").model
    cfg = detector.cfg
    size = cfg.backbone.img_size
    settings = {
        "paper, pooled 2x2": PruningConfig.paper(size),
        "paper, unpooled": PruningConfig.paper(size, rollout_pool=1),
        "shipped vitdet-small": cfg.pruning,
        "shipped, pooled 2x2": dataclasses.replace(cfg.pruning, rollout_pool=2),
    }
    rows, records = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for prune_from in ("input", "block0-mlp"):
            # rows of every global block: the paper's settings roll out through all of them
            plan = StagePlan.create(
                cfg, [args.k], prune_from=prune_from, rollout_blocks=cfg.backbone.global_blocks
            )
            pkg = Path(tmp) / prune_from
            ensure_package(detector.eval(), plan, pkg, symbolic=False, progress=False)
            pipe = Pipeline.load(pkg, backend="ort", threads=args.threads)
            if prune_from == "input":
                dense = evaluate(pipe, [EvalSetting()], args.sequences, args.frames)[0]
                rows.append(("dense", "-", dense))
                memory = {name: attention_row_mib(pipe, p) for name, p in settings.items()}
            for name, pruning in settings.items():
                setting = EvalSetting(args.k, pruning=pruning)
                (rec,) = evaluate(pipe, [setting], args.sequences, args.frames)
                rows.append((name, prune_from, rec))
    lines = [
        f"| vitdet-small, K = {args.k} | pruning from | GFLOPs | mAP50 | "
        "attention-row buffers (MiB) | ms/frame |",
        "|---|---|---|---|---|---|",
    ]
    for name, prune_from, rec in rows:
        mib = f"{memory[name]:.2f}" if name in memory else "-"
        lines.append(
            f"| {name} | {prune_from} | {rec.gflops:.3f} | {100 * rec.map50:.2f} | {mib} | "
            f"{rec.ms_per_frame:.1f} |"
        )
        records[f"{name} / {prune_from}"] = rec.to_dict()
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "paper-preset.md").write_text(
        f"# Paper preset on vitdet-small (held-out {args.sequences} x {args.frames})\n\n{table}\n"
    )
    (out / "paper-preset.json").write_text(
        json.dumps({"records": records, "attention_row_mib": memory}, indent=1)
    )


if __name__ == "__main__":
    main()
