"""The detector's FLOPs report (`rgtp flops --model vitdet-*`)."""

from __future__ import annotations

from collections.abc import Sequence

from rgtp.core.selection import schedule_name
from rgtp.eval.reports import check_k, macs_table
from rgtp.families.detection.flops import block_keeps, frame_macs, schedule_macs
from rgtp.package.family import get_config

_CONVENTION_NAMES = {
    "paper": "the authors' count: windows computed whole",
    "executed": "what rgtp runs",
}


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
    """Analytic GFLOPs (multiply-accumulates x 1e9) of the named detector at input side
    `size`, dense and pruned to `k` (None: N; or a keep schedule, one K per stage), with a
    reset every `reset_every` frames: the figures (JSON-ready) and their table. (`reset`:
    a detector's reset steps are dense.)"""
    cfg = get_config(name, size)
    bb = cfg.backbone
    k = k if k is not None else bb.num_tokens
    if isinstance(k, int):
        k = check_k(k, bb)
    else:
        block_keeps(bb, k)  # a keep schedule: one K per stage of the default cut
    conv = convention
    rows = {
        "dense": frame_macs(bb, None, radius, cfg, convention=conv),
        "pruned": frame_macs(bb, k, radius, cfg, prune_from, conv),
        "average": schedule_macs(bb, k, reset_every, radius, cfg, prune_from, conv),
    }
    report = {
        "model": name,
        "size": bb.img_size,
        "num_tokens": bb.num_tokens,
        "k": k if isinstance(k, int) else list(k),
        "convention": conv,
        "prune_from": prune_from,
        "reset_every": reset_every,
        "radius": radius,
        **{
            setting: {f"{part}_gmacs": v / 1e9 for part, v in m.as_dict().items()}
            for setting, m in rows.items()
        },
    }
    report["average_over_dense"] = rows["average"].backbone / rows["dense"].backbone
    keep = k if isinstance(k, int) else schedule_name(k) + " (per stage)"
    text = [
        f"{name} at {bb.img_size}x{bb.img_size}: N = {bb.num_tokens} tokens, keep K = {keep}, "
        f"reset every {reset_every} frames, pruning from {prune_from}",
        f"GFLOPs, {conv} convention ({_CONVENTION_NAMES[conv]}): "
        "multiply-accumulates of the backbone, x1e9",
        *macs_table(rows),
        f"average backbone GFLOPs per frame: {rows['average'].backbone / 1e9:.1f} "
        f"({100 * report['average_over_dense']:.1f} % of dense)",
    ]
    return report, "\n".join(text)
