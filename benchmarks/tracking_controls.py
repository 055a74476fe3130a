"""Does token tracking help, and is it the match that helps? Controls on SynthVID.

    python benchmarks/tracking_controls.py --sampling 4 --keep 77 --json out/eval/tracking.json

Runs the shipped vitdet-small (its pruning settings, K tokens, reset every 8) on the held-out
split with the tracking step swapped for each of:
  r = 0             importance stays where it was (no tracking)
  pull              the paper's Eq. 4: ŝ[i] = s[j*(i)], j* the best match in the window
  union             rgtp's extension: ŝ[i] = max(s[i], s[j*(i)])
  union, random j   control: the union with a random window cell instead of the match
  window max        control: ŝ[i] = max of s over the whole window (a plain dilation)
  oracle pull       ŝ[i] = s[i - true motion], the motion read off the ground-truth boxes
                    (clamped to the window; background tokens stay), an upper bound for pull
and reports mAP50 for each, plus how far objects move between frames in tokens, measured
from the ground-truth boxes, which bounds what any tracking can gain.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from rgtp.cli.options import add_heldout_videos
from rgtp.core.selection import FixedKeep
from rgtp.core.tracking import match_similarity, track
from rgtp.data.coco import sequences_to_coco
from rgtp.data.synthvid import CLASSES, Sequence, SynthVIDConfig, generate_sequence, heldout_seeds
from rgtp.export.ensure import ensure_package
from rgtp.families.detection.tools.coco_map import detections_to_coco, map50
from rgtp.families.loading import load_model
from rgtp.package.plan import StagePlan
from rgtp.runtime import Pipeline

MODEL = "vitdet-small"
Tracker = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def object_motion(seq: Sequence, t: int, patch: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(box at t, centre motion in tokens (dy, dx) since t - 1) of every object visible in
    both frames, front to back."""
    prev = {int(i): b for i, b in zip(seq.track_ids[t - 1], seq.boxes[t - 1], strict=True)}
    out = []
    for i, box in zip(seq.track_ids[t], seq.boxes[t], strict=True):
        if int(i) in prev:
            centre = (box[:2] + box[2:]) / 2
            before = (prev[int(i)][:2] + prev[int(i)][2:]) / 2
            out.append((box, (centre - before)[::-1] / patch))
    return out


def oracle_source(seq: Sequence, t: int, grid: int, patch: int, radius: int) -> torch.Tensor:
    """Source token of every token of frame t under the ground-truth object motion."""
    src = torch.arange(grid * grid).view(grid, grid)
    centres = (torch.arange(grid) + 0.5) * patch
    for box, (dy, dx) in reversed(object_motion(seq, t, patch)):  # front objects win
        x1, y1, x2, y2 = box.tolist()
        ys = ((centres >= y1) & (centres <= y2)).nonzero().flatten()
        xs = ((centres >= x1) & (centres <= x2)).nonzero().flatten()
        if len(ys) == 0 or len(xs) == 0:
            continue
        sy = (ys - int(np.clip(round(dy), -radius, radius))).clamp(0, grid - 1)
        sx = (xs - int(np.clip(round(dx), -radius, radius))).clamp(0, grid - 1)
        src[ys[:, None], xs[None, :]] = sy[:, None] * grid + sx[None, :]
    return src.flatten()


def controls(frame: dict, patch: int) -> dict[str, tuple[int, Tracker]]:
    """name -> (radius, tracking function with `track`'s signature)."""
    gen = torch.Generator().manual_seed(0)

    def rgtp_track(union: bool) -> Tracker:
        """`track` with the union fixed, whatever the model's settings say."""
        return lambda prev_s, prev_z, z, grid, radius, similarity, _: track(
            prev_s, prev_z, z, grid, radius, similarity, union
        )

    def random_union(prev_s, prev_z, z, grid, radius, similarity, union):
        _, sim = track(prev_s, prev_z, z, grid, radius, similarity)
        offset = torch.randint(-radius, radius + 1, (2, grid, grid), generator=gen)
        cells = torch.arange(grid)
        sy = (cells[:, None] + offset[0]).clamp(0, grid - 1)
        sx = (cells[None, :] + offset[1]).clamp(0, grid - 1)
        return torch.maximum(prev_s, prev_s[(sy * grid + sx).flatten()]), sim

    def window_max(prev_s, prev_z, z, grid, radius, similarity, union):
        _, sim = track(prev_s, prev_z, z, grid, radius, similarity)
        size = 2 * radius + 1
        return F.max_pool2d(prev_s.view(1, 1, grid, grid), size, 1, radius).flatten(), sim

    def oracle(prev_s, prev_z, z, grid, radius, similarity, union):
        source = oracle_source(frame["seq"], frame["t"], grid, patch, radius)
        return prev_s[source], match_similarity(prev_z, z, source)

    return {
        "r = 0": (0, rgtp_track(False)),
        "pull (paper)": (1, rgtp_track(False)),
        "union (rgtp)": (1, rgtp_track(True)),
        "union, random j": (1, random_union),
        "window max": (1, window_max),
        "oracle pull": (1, oracle),
    }


def run(
    pipe: Pipeline,
    seqs: tuple[Sequence, ...],
    gt: dict,
    k: int,
    name: str,
    tracker: Tracker,
    radius: int,
    frame: dict,
) -> float:
    """mAP50 (0-1) of the shipped settings with `tracker` in place of the stream's tracking;
    `frame` is kept pointing at the sequence and frame index being processed (the oracle
    reads it)."""
    results, image_id = [], 0
    total = sum(len(s.frames) for s in seqs)
    with mock.patch("rgtp.runtime.stream.track", tracker), tqdm(total=total, desc=name) as bar:
        for seq in seqs:
            stream = pipe.new_stream(policy=FixedKeep(k), radius=radius, reset_every=8)
            frame["seq"] = seq
            for t, image in enumerate(seq.frames):
                frame["t"] = t
                image_id += 1
                results += detections_to_coco(image_id, stream.step(image).detections)
                bar.update(1)
    return map50(gt, results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sampling", type=int, default=4)
    ap.add_argument("--keep", dest="k", type=int, default=77)
    add_heldout_videos(ap)
    ap.add_argument(
        "--offset", type=int, default=0, help="skip this many held-out sequences (a replication)"
    )
    ap.add_argument("--json", type=Path, default=Path("out/eval/tracking-controls.json"))
    args = ap.parse_args()

    detector = load_model(MODEL, allow_missing=True).model
    bb = detector.cfg.backbone
    with tempfile.TemporaryDirectory() as tmp:
        plan = StagePlan.create(detector.cfg, [args.k])
        ensure_package(detector, plan, tmp, symbolic=False, progress=False)
        pipe = Pipeline.load(tmp, backend="ort")
        cfg = SynthVIDConfig(size=bb.img_size, num_frames=args.frames, sampling=args.sampling)
        seeds = heldout_seeds(args.offset + args.sequences)[args.offset :]
        seqs = tuple(generate_sequence(seed, cfg) for seed in seeds)
        moves = [
            float(np.hypot(*m))
            for s in seqs
            for t in range(1, len(s.frames))
            for _, m in object_motion(s, t, bb.patch_size)
        ]
        p50, p75, p90 = np.percentile(moves, [50, 75, 90])
        gt = sequences_to_coco(seqs, CLASSES)
        frame: dict = {}
        rows = {}
        for name, (radius, tracker) in controls(frame, bb.patch_size).items():
            rows[name] = run(pipe, seqs, gt, args.k, name, tracker, radius, frame)

    print(
        f"\nobject motion between frames at 1/{args.sampling} sampling, in tokens: "
        f"median {p50:.2f}, p75 {p75:.2f}, p90 {p90:.2f}"
    )
    print(f"\n| tracking at 1/{args.sampling} sampling, K = {args.k} | mAP50 |\n|---|---|")
    for name, value in rows.items():
        print(f"| {name} | {100 * value:.2f} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "model": MODEL,
                "sampling": args.sampling,
                "k": args.k,
                "sequences": args.sequences,
                "offset": args.offset,
                "frames": args.frames,
                "motion_tokens": {"median": p50, "p75": p75, "p90": p90},
                "map50": rows,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
