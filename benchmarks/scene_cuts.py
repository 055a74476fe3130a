"""Scene cuts (beyond the paper, docs/results.md "Scene cuts"): does a cut detector on the patch
embeddings (`rgtp.core.scene_cut`, `StreamOptions.scene_cut`) that runs a reset step at once pay
for itself? On the shipped vitdet-small at K = 77 (as `rgtp demo`), ONNX Runtime CPU, reset
every 8, r = 1:

- cuts: two held-out SynthVID sequences joined at frame c (frames 0..c-1 of one, c..c+7 of the
  other, c = 9..15 in turn, so a cut falls at every phase of the periodic schedule but the one
  where the periodic reset already comes); mAP50 over the 8 frames from the cut, with and
  without cut resets, and dense (K = N) on the same frames for reference;
- uncut held-out sequences with cut resets on: how many steps are called cuts (false cuts);
- each run's GFLOPs per frame (the paper's convention, from the K each frame's stages ran on),
  and the patch similarity of every step, so the threshold can be read off the two sets.

    python benchmarks/scene_cuts.py [--threshold 0.75] [--pairs 7] [--uncut 8]
        [--uncut-frames 32] [--package out/bench/scene-cuts-pkg]
        [--json benchmarks/results/scene-cuts-2026-12-07.json]

`--vivit` instead reads the same statistic off the shipped vivit-small (torch, K = 26) on
held-out SynthMotion clips: every step within 4 clips, and the step at the middle of 4 clips
whose second half is another clip's, to see whether one threshold serves both backbones
(JSON: benchmarks/results/scene-cuts-vivit-small-2026-12-07.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import statistics
import time
from pathlib import Path

import numpy as np

from rgtp.core.scene_cut import patch_similarity
from rgtp.core.selection import FixedKeep, is_reset_frame
from rgtp.data.coco import sequences_to_coco
from rgtp.data.synthvid import CLASSES, Sequence, SynthVIDConfig, generate_sequence, heldout_seeds
from rgtp.export.ensure import ensure_package
from rgtp.families.detection.flops import frame_macs
from rgtp.families.detection.tools.coco_map import detections_to_coco, map50
from rgtp.families.loading import load_model
from rgtp.package.plan import StagePlan
from rgtp.runtime import Pipeline

MODEL = "vitdet-small"
RESET_EVERY = 8
AFTER = 8  # frames scored from each cut


def window(seq: Sequence, start: int, stop: int) -> Sequence:
    """Frames start..stop-1 of `seq` with their annotations."""
    return dataclasses.replace(
        seq,
        frames=seq.frames[start:stop],
        boxes=seq.boxes[start:stop],
        labels=seq.labels[start:stop],
        track_ids=seq.track_ids[start:stop],
    )


def run(pipe: Pipeline, frames: np.ndarray, k: int | None, cut: float | None) -> dict:
    """One stream over `frames`: per step its detections, whether it was a reset, its GFLOPs
    and its patch similarity to the step before (None on the first)."""
    stream = pipe.new_stream(
        policy=None if k is None else FixedKeep(k), reset_every=RESET_EVERY, scene_cut=cut
    )
    plan, bb = pipe.plan, pipe.plan.config.backbone
    out: dict[str, list] = {"detections": [], "reset": [], "gflops": [], "similarity": []}
    prev = None
    for frame in frames:
        r = stream.step(frame)
        z = stream.state.prev_patches.clone()  # this step's z_0
        out["similarity"].append(None if prev is None else float(patch_similarity(z, prev)))
        prev = z
        out["detections"].append(r.detections)
        out["reset"].append(bool(r.reset))
        macs = frame_macs(bb, r.stage_k, 1, prune_from=plan.prune_from, stages=plan.stages)
        out["gflops"].append(macs.backbone / 1e9)
    return out


def score(windows: list[Sequence], detections: list[list]) -> float:
    """mAP50 of per-window detections against the windows' annotations."""
    results, image_id = [], 0
    for dets in detections:
        for d in dets:
            image_id += 1
            results += detections_to_coco(image_id, d)
    return map50(sequences_to_coco(windows, CLASSES), results)


def similarities(stream, frames: list[np.ndarray]) -> list[float]:
    """Patch similarity of every step of `stream` over `frames` to the step before."""
    out, prev = [], None
    for f in frames:
        if stream.step(f) is None:  # a frame held for its tubelet
            continue
        z = stream.state.prev_patches.clone()
        if prev is not None:
            out.append(float(patch_similarity(z, prev)))
        prev = z
    return out


def vivit(path: str) -> None:
    """The statistic on the shipped vivit-small within and across held-out clips."""
    from rgtp.families.classification.data import data_config, heldout_clips

    model = load_model("vivit-small").model.eval()
    pipe = Pipeline.from_model(model, (26,))
    clips = heldout_clips(8, data_config(model.cfg))

    def stream():
        return pipe.new_stream(policy=FixedKeep(26), reset_every=0)

    within = [s for c in clips[:4] for s in similarities(stream(), list(c.frames))]
    half = len(clips[0].frames) // 2
    steps = half // model.cfg.spatial.tubelet  # the cut's step: the first of the second clip
    cuts = [
        similarities(stream(), list(clips[i].frames[:half]) + list(clips[i + 4].frames[half:]))[
            steps - 1
        ]
        for i in range(4)
    ]
    record = {
        "date": datetime.date.today().isoformat(),
        "model": "vivit-small",
        "backend": "torch (CPU)",
        "keep": 26,
        "within_clips": within,
        "at_cuts": cuts,
    }
    print(
        f"vivit-small patch similarity: within 4 clips min {min(within):.3f} median "
        f"{statistics.median(within):.3f} ({len(within)} steps); at 4 spliced cuts "
        f"{', '.join(f'{c:.3f}' for c in cuts)}"
    )
    Path(path).write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--keep", type=int, default=77)
    p.add_argument("--threshold", type=float, default=0.75)
    p.add_argument("--pairs", type=int, default=7, help="spliced pairs of held-out sequences")
    p.add_argument("--uncut", type=int, default=8, help="uncut held-out sequences")
    p.add_argument("--uncut-frames", type=int, default=32)
    p.add_argument("--package", default="out/bench/scene-cuts-pkg")
    p.add_argument("--json", default="benchmarks/results/scene-cuts-2026-12-07.json")
    p.add_argument("--vivit", action="store_true", help="the vivit-small check only")
    args = p.parse_args()
    if args.vivit:
        vivit("benchmarks/results/scene-cuts-vivit-small-2026-12-07.json")
        return
    start = time.perf_counter()

    model = load_model(MODEL).model.eval()
    plan = StagePlan.create(model.cfg, [args.keep], "per-global")
    pipe = Pipeline.load(ensure_package(model, plan, args.package, symbolic=False), "ort")
    size = plan.encoder.img_size
    k, th = args.keep, args.threshold

    # Cuts: pair i joins held-out sequences 2i and 2i+1 at c = 9 + i mod 7.
    cuts = max(c for c in (9 + i % 7 for i in range(args.pairs)))
    cfg = SynthVIDConfig(size=size, num_frames=cuts + AFTER)
    seqs = [generate_sequence(s, cfg) for s in heldout_seeds(2 * args.pairs)]
    runs: dict[str, list] = {"without": [], "with": [], "dense": []}
    windows, cut_similarity, gflops = [], [], {"without": [], "with": []}
    cut_resets = 0
    for i in range(args.pairs):
        c = 9 + i % 7
        a, b = seqs[2 * i], seqs[2 * i + 1]
        frames = np.concatenate([a.frames[:c], b.frames[c : c + AFTER]])
        windows.append(window(b, c, c + AFTER))
        for name, cut in (("without", None), ("with", th)):
            r = run(pipe, frames, k, cut)
            runs[name].append(r["detections"][c:])
            gflops[name] += r["gflops"]
            if cut is not None:
                cut_similarity.append(r["similarity"][c])
                cut_resets += r["reset"][c]
        runs["dense"].append(run(pipe, b.frames[c : c + AFTER], None, None)["detections"])
    maps = {name: score(windows, d) for name, d in runs.items()}

    # Uncut held-out sequences, cut resets on: every reset off the periodic schedule is false.
    cfg = SynthVIDConfig(size=size, num_frames=args.uncut_frames)
    uncut = [generate_sequence(s, cfg) for s in heldout_seeds(2 * args.pairs + args.uncut)]
    uncut = uncut[2 * args.pairs :]  # none of the sequences the cuts join
    false_cuts, steps, smooth, uncut_gflops = 0, 0, [], []
    for seq in uncut:
        r = run(pipe, seq.frames, k, th)
        for t, reset in enumerate(r["reset"]):
            false_cuts += reset and not is_reset_frame(t, RESET_EVERY)
        steps += len(r["reset"]) - 1
        smooth += [s for s in r["similarity"] if s is not None]
        uncut_gflops += r["gflops"]

    dense_gflops = frame_macs(plan.config.backbone).backbone / 1e9
    record = {
        "date": datetime.date.today().isoformat(),
        "model": MODEL,
        "backend": "ort (CPU)",
        "keep": k,
        "reset_every": RESET_EVERY,
        "radius": 1,
        "threshold": th,
        "pairs": args.pairs,
        "cut_frames": [9 + i % 7 for i in range(args.pairs)],
        "frames_scored_per_cut": AFTER,
        "map50_after_cut": maps,
        "cuts_detected": int(cut_resets),
        "cut_similarity": cut_similarity,
        "uncut_sequences": args.uncut,
        "uncut_steps": steps,
        "false_cuts": int(false_cuts),
        "uncut_similarity_min": min(smooth),
        "uncut_similarity_p1": float(np.percentile(smooth, 1)),
        "uncut_similarity_median": statistics.median(smooth),
        "gflops_per_frame_cut_sequences": {n: statistics.fmean(g) for n, g in gflops.items()},
        "gflops_per_frame_uncut_with": statistics.fmean(uncut_gflops),
        "gflops_dense": dense_gflops,
        "seconds": time.perf_counter() - start,
    }
    g = record["gflops_per_frame_cut_sequences"]
    print(f"{MODEL} K={k} R={RESET_EVERY}, cut threshold {th} (mean patch cosine), ORT CPU")
    print(f"| setting | mAP50, {AFTER} frames after each of {args.pairs} cuts | GFLOPs/frame |")
    print("|---|---|---|")
    print(f"| periodic resets only | {maps['without']:.3f} | {g['without']:.3f} |")
    print(f"| + cut resets | {maps['with']:.3f} | {g['with']:.3f} |")
    print(f"| dense (K = N) | {maps['dense']:.3f} | {dense_gflops:.3f} |")
    print(
        f"cuts detected {cut_resets}/{args.pairs}; patch similarity at the cuts: "
        f"max {max(cut_similarity):.3f}; uncut: {false_cuts} false cuts in {steps} steps of "
        f"{args.uncut} sequences, similarity min {record['uncut_similarity_min']:.3f}, "
        f"p1 {record['uncut_similarity_p1']:.3f}, median {record['uncut_similarity_median']:.3f}; "
        f"uncut GFLOPs/frame with cut resets {record['gflops_per_frame_uncut_with']:.3f}"
    )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.json} in {record['seconds']:.0f} s")


if __name__ == "__main__":
    main()
