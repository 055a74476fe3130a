"""Keep schedules (one K per stage, docs/method.md "Keep schedules", Eq. 8) against one K at every
stage, at equal GFLOPs, on the shipped vitdet-small: held-out SynthVID, reset every 8, r = 1, ONNX
Runtime CPU. Prints the table, writes JSON under out/bench/, and times the Eq. 8 solves per frame.

    python benchmarks/keep_schedules.py [--keep 77] [--schedules 96/85/69/58,128/96/48/36]
        [--sequences 30] [--frames 64] [--out out/bench]

The model's four stages (one global block each, three blocks per stage) cost the same per
kept token, so a schedule whose mean K is the uniform K has the same GFLOPs in the paper's
convention (the table states each setting's GFLOPs, from the K every frame's stages ran on).
Each schedule runs twice: rolling out through the shipped model's own blocks (block 11
only: no rollout block precedes a later stage, so its importance is the tracked s_0 itself,
Eq. 8 with the identity) and through every global block (2, 5, 8, 11: stage i's importance
solves through the i global blocks before it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rgtp.cli.options import add_heldout_videos
from rgtp.core.rollout import later_importance
from rgtp.core.selection import ScheduleKeep, check_schedule, schedule_name
from rgtp.data.synthvid import SynthVIDConfig, generate_sequence, heldout_seeds
from rgtp.export.ensure import ensure_package
from rgtp.families.detection.flops import frame_macs
from rgtp.families.detection.tools.evaluate import EvalSetting, evaluate, keep_name
from rgtp.families.loading import load_model
from rgtp.package.plan import StagePlan
from rgtp.runtime import Pipeline

MODEL = "vitdet-small"


def schedules(text: str) -> list[tuple[int, ...]]:
    return [tuple(int(k) for k in s.split("/")) for s in text.split(",") if s]


def solve_ms(pipe: Pipeline, pruning, schedule: tuple[int, ...], frames: int = 40) -> float:
    """Milliseconds per pruned frame of the Eq. 8 solves a schedule's shrinking stages run
    (`later_importance` on a stream's real buffers, from its tracked importance), median."""
    stream = pipe.new_stream(policy=ScheduleKeep(schedule), reset_every=0, pruning=pruning)
    seq = generate_sequence(
        heldout_seeds(1)[0], SynthVIDConfig(size=pipe.plan.encoder.img_size, num_frames=4)
    )
    for frame in seq.frames:
        result = stream.step(frame)
    st, plan = stream.state, pipe.plan
    rollout = pruning.blocks(plan.global_blocks)
    before = [[g for g in rollout if g < plan.stages[i][0]] for i in range(len(schedule))]
    shrinking = [i for i in range(1, len(schedule)) if schedule[i] < schedule[i - 1]]
    times = []
    for _ in range(frames):
        start = time.perf_counter()
        for i in shrinking:
            blocks = before[i]
            later_importance(
                [st.attn_rows[g] for g in blocks],
                result.importance,
                plan.encoder.grid,
                sums=[st.attn_sums[g] for g in blocks],
            )
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", dest="k", type=int, default=77, help="the uniform K")
    ap.add_argument(
        "--schedules",
        type=schedules,
        default=schedules("96/85/69/58,128/96/48/36"),
        help="comma-separated keep schedules, each of mean K (equal GFLOPs)",
    )
    add_heldout_videos(ap)
    ap.add_argument("--no-dense", action="store_true", help="skip the dense reference")
    ap.add_argument("--out", default="out/bench")
    args = ap.parse_args()

    detector = load_model(MODEL).model
    cfg = detector.cfg
    bb = cfg.backbone
    stages = len(StagePlan.create(cfg, [args.k]).stages)
    for s in args.schedules:
        check_schedule(s, stages, bb.num_tokens)
    uniform = frame_macs(bb, args.k).backbone
    for s in args.schedules:  # equal GFLOPs by construction, checked: the table compares them
        if abs(frame_macs(bb, s).backbone - uniform) > 1e-6 * uniform:
            raise SystemExit(
                f"schedule {schedule_name(s)} has {frame_macs(bb, s).backbone / 1e9:.4f} GFLOPs "
                f"per pruned frame, K = {args.k} {uniform / 1e9:.4f}: not an equal-GFLOPs pair"
            )
    every = dataclasses.replace(cfg.pruning, rollout_blocks=bb.global_blocks)
    rollouts = {"shipped (block 11)": cfg.pruning, "every global block": every}
    rows, records, solves = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        # rows of every global block, so that either rollout can run on the one package
        plan = StagePlan.create(
            cfg, [args.k], rollout_blocks=bb.global_blocks, schedules=args.schedules
        )
        ensure_package(detector.eval(), plan, Path(tmp) / "pkg", symbolic=False, progress=False)
        pipe = Pipeline.load(Path(tmp) / "pkg", backend="ort")
        if not args.no_dense:
            (dense,) = evaluate(pipe, [EvalSetting()], args.sequences, args.frames)
            rows.append(("-", dense))
        for name, pruning in rollouts.items():
            for k in (args.k, *args.schedules):
                (rec,) = evaluate(
                    pipe, [EvalSetting(k, pruning=pruning)], args.sequences, args.frames
                )
                rows.append((name, rec))
            solves[name] = {schedule_name(s): solve_ms(pipe, pruning, s) for s in args.schedules}
    lines = [
        f"| {MODEL} SynthVID {bb.img_size} | rollout through | GFLOPs (paper) | % of dense | "
        "mAP50 | ms/frame |",
        "|---|---|---|---|---|---|",
    ]
    for rollout, rec in rows:
        lines.append(
            f"| {'dense' if rec.k == 'N' else 'K = ' + str(rec.k)} | {rollout} | "
            f"{rec.gflops:.4f} | {100 * rec.gflops_ratio:.1f} | {100 * rec.map50:.2f} | "
            f"{rec.ms_per_frame:.1f} |"
        )
        records.append({"rollout": rollout, **rec.to_dict()})
    table = "\n".join(lines)
    print(table)
    for name, by in solves.items():
        timed = ", ".join(f"{s}: {ms:.3f} ms" for s, ms in by.items())
        print(f"Eq. 8 solves per pruned frame, rollout through {name}: {timed}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "model": MODEL,
        "backend": "ort",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "convention": "paper",
        "sequences": args.sequences,
        "frames": args.frames,
        "uniform": keep_name(args.k),
        "schedules": [schedule_name(s) for s in args.schedules],
        "records": records,
        "solve_ms_per_frame": solves,
    }
    (out / "keep-schedules.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out / 'keep-schedules.json'}")


if __name__ == "__main__":
    main()
