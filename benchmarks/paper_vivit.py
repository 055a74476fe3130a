"""vivit-small on held-out SynthMotion at one K: dense, rgtp's cache method (the model's
pruning settings, the runtime's PyTorch engines) and the authors' cache-free ViViT method
(`rgtp.models.cache_free_stage`, PyTorch), each with and without a temporal transformer
fine-tuned on its own pruned features (480 training clips, 10 epochs, `FinetuneConfig`);
GFLOPs per clip; and how often the authors' off-grid tracking rule changes a match, with
its effect on top-1. Prints the table, writes JSON.

    python benchmarks/paper_vivit.py [--clips 600] [--keep 26] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from rgtp.core.tracking import _window, match_tokens, window_similarities
from rgtp.data.synthmotion import Clip, training_clips
from rgtp.families import get_config, shipped_weights
from rgtp.families.classification.config import ViViTConfig
from rgtp.families.classification.data import data_config, heldout_clips
from rgtp.families.classification.flops import block_macs, step_macs, view_macs
from rgtp.families.classification.tools.classify_pruned import classifier_table
from rgtp.families.classification.tools.finetune_temporal import (
    FinetuneConfig,
    finetuned_path,
    fit_temporal,
    load_temporal,
)
from rgtp.families.classification.vivit import ViViT
from rgtp.models.cache_free_stage import CacheFreeStage, CacheFreeStepper
from rgtp.package.family import family_of

MODEL = "vivit-small"


def cache_free_view_macs(cfg: ViViTConfig, k: int, reset_every: int = 8) -> float:
    """MACs of one view under the authors' cache-free method (as `view_macs` counts): step 0
    runs every token; steps R, 2R, ... the checkerboard (ceil(N/2)); the others K. On a pruned
    step block 0's qkv, attention and projection run on all 1 + N tokens, its MLP and every
    later block on the 1 + K kept, which attend only to each other (no cache)."""
    sp = cfg.spatial
    n, c, hidden = sp.num_tokens, sp.embed_dim, int(sp.embed_dim * sp.mlp_ratio)
    total = 0.0
    for step in range(cfg.num_steps):
        kept = n if step == 0 else (n + 1) // 2 if step % reset_every == 0 else k
        embed, _ = step_macs(sp, kept)
        first = (1 + n) * 4 * c * c + 2 * (1 + n) ** 2 * c + (1 + kept) * 2 * c * hidden
        later = (sp.depth - 1) * block_macs(1 + kept, 1 + kept, c, hidden)
        total += embed + first + later
    dense = view_macs(cfg)
    return total + dense.temporal


def clip_tensor(clip: Clip) -> torch.Tensor:
    """(T, S, S, 3) uint8 -> (1, 3, T, S, S) float RGB in [0, 255]."""
    return torch.from_numpy(clip.frames).permute(3, 0, 1, 2)[None].float()


def cache_free_features(
    model: ViViT, clips: Sequence[Clip], k: int, off_grid: str, stats: dict | None = None
) -> torch.Tensor:
    """Per-step CLS features (clips, s, C) of the authors' method at K = k; `stats` (when
    given) counts the tracked tokens, those whose every in-window similarity is negative and
    those whose match the authors' off-grid rule changes."""
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
            out.append(torch.stack(feats))
    return torch.stack(out)


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
    tuned_file = finetuned_path(weights, k)
    shipped = {k: load_temporal(copy.deepcopy(model), tuned_file).eval()}
    for r in classifier_table(model, clips, [k], shipped, progress=False):
        name = r.setting.replace("pruned", "rgtp cache method")
        rows.append((name, r.top1, r.gflops_per_clip))
    print(f"rgtp rows: {time.time() - start:.0f} s", flush=True)

    stats: dict = {}
    ours = cache_free_features(model, clips, k, "authors", stats)
    paper_gflops = cache_free_view_macs(cfg, k) / 1e9
    rows.append((f"paper cache-free K={k}", top1(model, ours, clips), paper_gflops))
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
        "finetune": {"config": vars(fc) if hasattr(fc, "__dict__") else str(fc), "log": log},
        "seconds": time.time() - start,
    }
    (out / "paper_vivit.json").write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
