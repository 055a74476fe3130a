"""Top-1 of the pruned classifier, in the paper's table form: dense, pruned, and pruned with
a temporal transformer fine-tuned on the pruned spatial encoder's outputs, with GFLOPs per
clip (`rgtp eval --model vivit-small`).

A clip runs through a fresh stream of the runtime, frame by frame, exactly as an
application's video would: the class is the one scored when the clip's last time step
completes (the temporal transformer over all its steps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from rgtp.core.selection import FixedKeep, checkerboard_size
from rgtp.data.synthmotion import Clip
from rgtp.families.classification.flops import view_macs
from rgtp.families.classification.vivit import ViViT
from rgtp.models.config import PruningConfig
from rgtp.runtime import Pipeline


@dataclass
class PrunedRun:
    """One setting over the clips: top-1 and the step features (clips, s, C) it computed."""

    top1: float
    features: torch.Tensor
    mean_k: float


def pruned_run(
    pipeline: Pipeline,
    clips: Sequence[Clip],
    k: int | None,
    reset_every: int = 8,
    reset: str = "dense",
    progress: bool = False,
    desc: str = "clips",
    radius: int = 1,
    pruning: PruningConfig | None = None,
) -> PrunedRun:
    """Run every clip through a fresh stream keeping k patch tokens (None: all), tracking
    within `radius`, with `pruning` settings (None: the model's)."""
    right, features, ks = 0, [], []
    policy = None if k is None else FixedKeep(k)
    for clip in tqdm(clips, desc=desc, unit="clip", disable=not progress, leave=False):
        stream = pipeline.new_stream(
            policy=policy, reset_every=reset_every, reset=reset, radius=radius, pruning=pruning
        )
        results = [r for r in map(stream.step, clip.frames) if r is not None]
        right += int(results[-1].label == clip.label)
        features.append(torch.stack([r.feature for r in results]))
        ks += [r.k for r in results]
    return PrunedRun(right / len(clips), torch.stack(features), sum(ks) / len(ks))


@dataclass
class TableRow:
    setting: str
    k: int | None  # None: dense
    top1: float
    gflops_per_clip: float
    of_dense: float  # GFLOPs as a fraction of dense


def classifier_table(
    model: ViViT,
    clips: Sequence[Clip],
    ks: Sequence[int],
    finetuned: dict[int, ViViT] | None = None,
    reset_every: int = 8,
    reset: str = "dense",
    progress: bool = True,
    radius: int = 1,
    pruning: PruningConfig | None = None,
    dense: bool = True,
) -> list[TableRow]:
    """Rows: dense, then per K in `ks` the pruned model, and the pruned model with the temporal
    transformer fine-tuned at that K (`finetuned[K]`, where given). GFLOPs per clip are
    multiply-accumulates (`rgtp.families.classification.flops`), reset steps counted at their K.
    `pruning`: settings other than the model's; `dense` False leaves out the dense row."""
    cfg = model.cfg
    board = checkerboard_size(cfg.spatial.grid)
    buckets = sorted({*ks, *([board] if reset == "checkerboard" else [])})
    dense_macs = view_macs(cfg).total

    def row(name: str, m: ViViT, k: int | None) -> TableRow:
        pipe = Pipeline.from_model(m, buckets)
        run = pruned_run(pipe, clips, k, reset_every, reset, progress, name, radius, pruning)
        reset_k = board if reset == "checkerboard" else None
        macs = dense_macs if k is None else view_macs(cfg, k, reset_every, reset_k).total
        return TableRow(name, k, run.top1, macs / 1e9, macs / dense_macs)

    rows = [row("dense", model, None)] if dense else []
    for k in ks:
        rows.append(row(f"pruned K={k}", model, k))
        if finetuned and k in finetuned:
            rows.append(row(f"pruned K={k} + fine-tuned temporal", finetuned[k], k))
    return rows


def format_table(rows: Sequence[TableRow], clips: int) -> str:
    lines = [
        f"{'setting':<40}{'top-1 (%)':>10}{'GFLOPs/clip':>13}{'of dense':>10}",
        *(
            f"{r.setting:<40}{100 * r.top1:>10.2f}{r.gflops_per_clip:>13.3f}"
            f"{100 * r.of_dense:>9.1f}%"
            for r in rows
        ),
        f"({clips} held-out clips; GFLOPs = multiply-accumulates x 1e9, one view)",
    ]
    return "\n".join(lines)


def rows_as_dicts(rows: Sequence[TableRow]) -> list[dict]:
    return [asdict(r) for r in rows]
