"""Choosing the classifier's novelty setting on validation clips: top-1 of the shipped
`vivit-small` pruned at K with each novelty setting, beside dense.

    python benchmarks/vivit_novelty.py --first 600 --clips 1200 --keep 26 \\
        --settings match:0.5,cache:0.3,cache:0.5

Validation clips are held-out SynthMotion clips from index `--first` on, disjoint from the
first 600 that the README's tables report. A setting is `novelty:share`
(`PruningConfig.novelty`, `novelty_share`), on top of the model's other pruning settings.
Prints the table and writes JSON under out/bench/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from rgtp.families.classification.data import data_config, heldout_clips
from rgtp.families.classification.tools.classify_pruned import pruned_run
from rgtp.families.loading import load_model
from rgtp.runtime import Pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="vivit-small")
    ap.add_argument("--first", type=int, default=600, help="first held-out clip index")
    ap.add_argument("--clips", type=int, default=1200)
    ap.add_argument("--keep", type=int, default=26)
    ap.add_argument("--settings", default="match:0.5,cache:0.3,cache:0.5")
    ap.add_argument("--no-dense", action="store_true")
    ap.add_argument("--json", default="out/bench/vivit_novelty.json")
    args = ap.parse_args()

    torch.set_grad_enabled(False)
    model = load_model(args.model).model
    cfg = model.cfg
    clips = heldout_clips(args.clips, data_config(cfg), args.first)
    pipe = Pipeline.from_model(model, [args.keep])

    rows: dict[str, float] = {}
    runs: list[tuple[str, int | None, object]] = [] if args.no_dense else [("dense", None, None)]
    for setting in args.settings.split(","):
        novelty, share = setting.split(":")
        pruning = dataclasses.replace(cfg.pruning, novelty=novelty, novelty_share=float(share))
        runs.append((f"K={args.keep} novelty {novelty} share {share}", args.keep, pruning))
    print(f"{args.model}: held-out clips {args.first}..{args.first + args.clips - 1}")
    for name, k, pruning in runs:
        start = time.perf_counter()
        run = pruned_run(pipe, clips, k, progress=True, desc=name, pruning=pruning)
        rows[name] = 100 * run.top1
        print(f"{name:<40}{rows[name]:>8.2f} %   ({time.perf_counter() - start:.0f} s)", flush=True)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"model": args.model, "first": args.first, "clips": args.clips, "top1": rows}
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
