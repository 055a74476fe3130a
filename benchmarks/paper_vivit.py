"""vivit-small on held-out SynthMotion at one K: dense, rgtp's cache method (the model's
pruning settings, the runtime's PyTorch engines) and the authors' cache-free ViViT method
(`rgtp.models.cache_free_stage`, PyTorch), each with and without a temporal transformer
fine-tuned on its own pruned features (480 training clips, 10 epochs, `FinetuneConfig`);
GFLOPs per clip; and how often the authors' off-grid tracking rule changes a match, with
its effect on top-1. The authors' method runs twice: in PyTorch (`CacheFreeStepper`) and as
an exported cache-free package on the runtime (`--backend`, ONNX Runtime by default), whose
kept sets and features are compared with PyTorch's. Prints the table, writes JSON.

    python benchmarks/paper_vivit.py [--clips 600] [--keep 26] [--backend ort]
        [--runtime-only] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from rgtp.core.selection import FixedKeep, checkerboard_size
from rgtp.core.tracking import _window, match_tokens, window_similarities
from rgtp.data.synthmotion import Clip, training_clips
from rgtp.export.package import export_package
from rgtp.families import get_config, shipped_weights
from rgtp.families.classification.data import data_config, heldout_clips
from rgtp.families.classification.flops import view_macs
from rgtp.families.classification.tools.classify_pruned import classifier_table
from rgtp.families.classification.tools.finetune_temporal import (
    FinetuneConfig,
    finetuned_path,
    fit_temporal,
    load_temporal,
)
from rgtp.families.classification.vivit import ViViT
from rgtp.models.cache_free_stage import CacheFreeStage, CacheFreeStepper
from rgtp.models.config import PruningConfig
from rgtp.package.family import family_of
from rgtp.package.plan import StagePlan
from rgtp.runtime import Pipeline

MODEL = "vivit-small"


def clip_tensor(clip: Clip) -> torch.Tensor:
    """(T, S, S, 3) uint8 -> (1, 3, T, S, S) float RGB in [0, 255]."""
    return torch.from_numpy(clip.frames).permute(3, 0, 1, 2)[None].float()


def cache_free_features(
    model: ViViT,
    clips: Sequence[Clip],
    k: int,
    off_grid: str,
    stats: dict | None = None,
    kept: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Per-step CLS features (clips, s, C) of the authors' method at K = k; `stats` (when
    given) counts the tracked tokens, those whose every in-window similarity is negative and
    those whose match the authors' off-grid rule changes; `kept` (when given) gets each
    clip's kept sets as masks (s, N)."""
    cfg = model.cfg
    t, grid = cfg.spatial.tubelet, cfg.spatial.grid
    stage = CacheFreeStage(model.spatial.blocks)
    out = []
    with torch.no_grad():
        for clip in clips:
            pixels = clip_tensor(clip)
            stepper = CacheFreeStepper(stage, grid, k, 8, 1, off_grid)
            feats = []
            for s in range(cfg.num_steps):
                z, tokens = model.embed(pixels[:, :, s * t : (s + 1) * t])
                if stats is not None and stepper.prev_patches is not None:
                    count_off_grid(stepper.prev_patches, z[0], grid, stats)
                step = stepper.step(z[0], tokens[0])
                feats.append(model.cls_features(step.tokens[None])[0])
                if kept is not None:
                    mask = torch.zeros(grid * grid, dtype=torch.bool)
                    mask[step.keep] = True
                    kept.append(mask)
            out.append(torch.stack(feats))
    return torch.stack(out)


def runtime_features(
    model: ViViT, clips: Sequence[Clip], k: int, backend: str, workdir: Path
) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' method as a user runs it: `model` exported as a cache-free package
    (buckets K and the checkerboard's) and streamed clip by clip on `backend`. Returns the
    per-step CLS features (clips, s, C) and the kept sets (clips, s, N) as masks."""
    paper_pruning = PruningConfig.paper(model.cfg.spatial.img_size, cls_token=True)
    cfg = dataclasses.replace(model.cfg, pruning=paper_pruning)
    paper = copy.deepcopy(model)
    paper.cfg = cfg
    n = cfg.spatial.num_tokens
    export_package(paper, StagePlan.create(cfg, (k, (n + 1) // 2)), workdir, progress=False)
    pipe = Pipeline.load(workdir, backend=backend)
    options = {"policy": FixedKeep(k), "reset": "checkerboard", "reset_every": 8, "radius": 1}
    features, kept = [], []
    for clip in clips:
        stream = pipe.new_stream(**options)
        results = [r for r in map(stream.step, clip.frames) if r is not None]
        features.append(torch.stack([r.feature for r in results]))
        masks = torch.zeros(len(results), n, dtype=torch.bool)
        for i, r in enumerate(results):
            masks[i, r.keep] = True
        kept.append(masks)
    pipe.close()
    return torch.stack(features), torch.stack(kept)


def count_off_grid(prev_z: torch.Tensor, z: torch.Tensor, grid: int, stats: dict) -> None:
    sims = window_similarities(prev_z, z, grid, 1)
    _, valid = _window(grid, 1, z.device)
    all_negative = (sims.masked_fill(~valid, -1.0) < 0).all(dim=1)
    theirs = match_tokens(prev_z, z, grid, 1, off_grid="authors")
    ours = match_tokens(prev_z, z, grid, 1)
    stats["tokens"] = stats.get("tokens", 0) + z.shape[0]
    stats["all_negative"] = stats.get("all_negative", 0) + int(all_negative.sum())
    stats["changed"] = stats.get("changed", 0) + int((theirs != ours).sum())


def top1(model: ViViT, features: torch.Tensor, clips: Sequence[Clip]) -> float:
    with torch.no_grad():
        pred = model.temporal_head(features).argmax(-1)
    labels = torch.tensor([c.label for c in clips])
    return float((pred == labels).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=600)
    ap.add_argument("--keep", dest="k", type=int, default=26)
    ap.add_argument("--backend", default="ort", help="the runtime backend of the package run")
    ap.add_argument(
        "--runtime-only",
        action="store_true",
        help="only the authors' method, in PyTorch and as an exported package on the runtime",
    )
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    start = time.time()
    cfg = get_config(MODEL)
    family = family_of(cfg)
    model = family.build(cfg)
    weights = shipped_weights(MODEL)
    family.load_weights(model, weights)
    model.eval()
    k, clips = args.k, heldout_clips(args.clips, data_config(cfg))
    dense_macs = view_macs(cfg).total

    rows = []
    if not args.runtime_only:
        tuned_file = finetuned_path(weights, k)
        shipped = {k: load_temporal(copy.deepcopy(model), tuned_file).eval()}
        for r in classifier_table(model, clips, [k], shipped, progress=False):
            name = r.setting.replace("pruned", "rgtp cache method")
            rows.append((name, r.top1, r.gflops_per_clip))
        print(f"rgtp rows: {time.time() - start:.0f} s", flush=True)

    stats: dict = {}
    torch_kept: list[torch.Tensor] = []
    ours = cache_free_features(model, clips, k, "authors", stats, torch_kept)
    paper_gflops = view_macs(cfg, k, 8, checkerboard_size(cfg.spatial.grid), True).total / 1e9
    rows.append((f"paper cache-free K={k}", top1(model, ours, clips), paper_gflops))
    with tempfile.TemporaryDirectory() as tmp:
        run_features, run_kept = runtime_features(model, clips, k, args.backend, Path(tmp) / "p")
    same_kept = (run_kept.flatten(0, 1) == torch.stack(torch_kept)).all(dim=1)
    runtime = {
        "backend": args.backend,
        "top1": top1(model, run_features, clips),
        "steps_with_the_same_kept_set": f"{int(same_kept.sum())} / {same_kept.numel()}",
        "max_abs_feature_difference": float((run_features - ours).abs().max()),
        "same_predictions": float(
            (model.temporal_head(run_features).argmax(-1) == model.temporal_head(ours).argmax(-1))
            .float()
            .mean()
        ),
    }
    rows.append(
        (f"paper cache-free K={k}, package on {args.backend}", runtime["top1"], paper_gflops)
    )
    print(f"runtime package vs PyTorch: {runtime}", flush=True)
    if args.runtime_only:
        print("\n".join(f"{n:<52}{100 * a:>10.2f}{g:>13.3f}" for n, a, g in rows))
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "paper_vivit_runtime.json").write_text(
            json.dumps(
                {
                    "date": time.strftime("%Y-%m-%d"),
                    "model": MODEL,
                    "clips": len(clips),
                    "k": k,
                    "rows": [{"setting": n, "top1": a, "gflops_per_clip": g} for n, a, g in rows],
                    "runtime": runtime,
                    "seconds": time.time() - start,
                },
                indent=1,
            )
        )
        return
    skip = cache_free_features(model, clips, k, "skip")
    skip_top1 = top1(model, skip, clips)

    fc = FinetuneConfig(k=k)
    train = list(itertools.islice(training_clips(fc.seed, data_config(cfg)), fc.clips))
    train_features = cache_free_features(model, train, k, "authors")
    tuned = copy.deepcopy(model)
    log = fit_temporal(tuned, train_features, torch.tensor([c.label for c in train]), fc, False)
    rows.append(
        (f"paper cache-free K={k} + fine-tuned temporal", top1(tuned, ours, clips), paper_gflops)
    )
    print(f"all rows: {time.time() - start:.0f} s", flush=True)

    lines = [f"{'setting':<52}{'top-1 (%)':>10}{'GFLOPs/clip':>13}{'of dense':>10}"]
    for name, acc, g in rows:
        lines.append(f"{name:<52}{100 * acc:>10.2f}{g:>13.3f}{100 * g * 1e9 / dense_macs:>9.1f}%")
    print("\n".join(lines))
    print(
        f"({len(clips)} held-out clips) off-grid rule: {stats['changed']} of {stats['tokens']} "
        f"tracked tokens change match ({stats['all_negative']} have every in-window similarity "
        f"negative); paper method with rgtp's off-grid rule: {100 * skip_top1:.2f} %"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "model": MODEL,
        "clips": len(clips),
        "k": k,
        "rows": [{"setting": n, "top1": a, "gflops_per_clip": g} for n, a, g in rows],
        "off_grid": {**stats, "paper_top1_with_skip_rule": skip_top1},
        "runtime": runtime,
        "finetune": {"config": vars(fc) if hasattr(fc, "__dict__") else str(fc), "log": log},
        "seconds": time.time() - start,
    }
    (out / "paper_vivit.json").write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
