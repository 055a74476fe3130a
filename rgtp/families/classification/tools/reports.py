"""The classifier's FLOPs report (`rgtp flops --model vivit-*`)."""

from __future__ import annotations

from collections.abc import Sequence

from rgtp.core.selection import checkerboard_size
from rgtp.eval.reports import check_k, macs_table
from rgtp.families.classification.flops import (
    KINETICS_VIEWS,
    PAPER_DENSE_TMACS_PER_VIDEO,
    view_macs,
)
from rgtp.package.family import get_config


def flops_report(
    name: str,
    size: int | None = None,
    k: int | Sequence[int] | None = None,
    reset_every: int = 8,
    radius: int = 1,
    reset: str = "dense",
    prune_from: str = "input",
    convention: str = "paper",
) -> tuple[dict, str]:
    """Analytic GFLOPs (multiply-accumulates x 1e9) of the named classifier at input side
    `size` per view (one clip) and per video, dense and pruned to `k` (None: N), with a
    `reset` step every `reset_every` time steps: the figures (JSON-ready) and their table.
    `prune_from` "block0-mlp" (`rgtp flops --paper`) counts the authors' cache-free method
    (`flops.cache_free_step_macs`), "input" rgtp's cache method. (`radius` changes nothing
    counted; both conventions count the same.)"""
    cfg = get_config(name, size)
    sp = cfg.spatial
    k = check_k(k, sp)
    views = KINETICS_VIEWS[0] * KINETICS_VIEWS[1]
    reset_every = max(reset_every, 1)
    board = checkerboard_size(sp.grid) if reset == "checkerboard" else None
    cache_free = prune_from == "block0-mlp"  # for a ViViT, only the authors' method prunes there
    pruned = view_macs(cfg, k, reset_every, board, cache_free)
    rows = {"dense": view_macs(cfg), "pruned": pruned}
    # the paper's dense figure, where it has one for this model at this size
    at_paper_size = sp.img_size == get_config(name).spatial.img_size
    paper = PAPER_DENSE_TMACS_PER_VIDEO.get(name) if at_paper_size else None
    report = {
        "model": name,
        "size": sp.img_size,
        "frames": cfg.num_frames,
        "num_tokens": sp.num_tokens,
        "k": k,
        "reset_every": reset_every,
        "reset": reset,
        "method": "authors' cache-free" if cache_free else "rgtp cache",
        "convention": convention,  # both count the same: no windowed blocks
        "views": views,
        **{
            setting: {f"{part}_gmacs_per_view": v / 1e9 for part, v in m.as_dict().items()}
            for setting, m in rows.items()
        },
        "dense_tmacs_per_video": rows["dense"].total * views / 1e12,
        "pruned_tmacs_per_video": rows["pruned"].total * views / 1e12,
        "paper_dense_tmacs_per_video": paper,
    }
    text = [
        f"{name} at {sp.img_size}x{sp.img_size}, {cfg.num_frames} frames "
        f"({cfg.num_steps} time steps of {sp.tubelet}): N = {sp.num_tokens} patch tokens + CLS, "
        f"keep K = {k}, a {reset} reset every {reset_every} time steps, "
        f"{report['method']} method",
        f"GFLOPs, {convention} convention (paper and executed agree for this model): "
        "multiply-accumulates, x1e9, per view (one clip)",
        *macs_table(rows),
        f"per video over {KINETICS_VIEWS[0]} clips x {KINETICS_VIEWS[1]} crops = {views} views: "
        f"dense {report['dense_tmacs_per_video']:.3f} TFLOPs, pruned "
        f"{report['pruned_tmacs_per_video']:.3f} TFLOPs "
        f"({100 * rows['pruned'].total / rows['dense'].total:.1f} % of dense)",
    ]
    if paper is not None:
        dense = report["dense_tmacs_per_video"]
        without = (rows["dense"].total - rows["dense"].patch_embed) * views / 1e12
        text.append(
            f"the paper, dense: {paper:.2f} TFLOPs per video; this count {dense:.3f} "
            f"({100 * (dense / paper - 1):+.1f} %); without the tubelet embedding, which the "
            f"authors' counter leaves out, {without:.3f} ({100 * (without / paper - 1):+.1f} %)"
        )
    return report, "\n".join(text)
