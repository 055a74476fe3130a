"""The reports rgtp prints: a model's GFLOPs, a package check, a run's summary, an evaluation
table written as JSON and Markdown. Each returns what it shows (figures and text), so the
API gives the same report the command line prints."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

# ------------------------------------------------------------------------------ flops

_CONVENTION_NAMES = {
    "paper": "the authors' count: windows computed whole",
    "executed": "what rgtp runs",
}


def flops(
    name: str,
    size: int | None = None,
    k: int | Sequence[int] | None = None,
    reset_every: int = 8,
    radius: int = 1,
    reset: str = "dense",
    prune_from: str = "input",
    convention: str = "paper",
) -> tuple[dict, str]:
    """Analytic GFLOPs (multiply-accumulates x 1e9) of the named model at input side `size`,
    dense and pruned to `k` (None: N; a detector also takes a keep schedule, one K per
    stage), with a reset every `reset_every` frames: the figures (JSON-ready) and their
    table."""
    from rgtp.package.family import get_config

    cfg = get_config(name, size)
    report = {"detection": _detector_flops, "classification": _classifier_flops}[cfg.family]
    return report(name, cfg, k, reset_every, radius, reset, prune_from, convention)


def _check_k(k, enc) -> int:
    k = k if k is not None else enc.num_tokens
    if not isinstance(k, int):
        raise ValueError("keep schedules (one K per stage) are for detectors; give one --keep K")
    if not 0 < k <= enc.num_tokens:
        raise ValueError(f"--keep must be in 1..{enc.num_tokens} (N at {enc.img_size} px)")
    return k


def _table(rows: Mapping) -> list[str]:
    """Parts down, settings across, GMACs."""
    lines = [f"{'part':<16}" + "".join(f"{name:>12}" for name in rows)]
    for p in next(iter(rows.values())).as_dict():
        lines.append(f"{p:<16}" + "".join(f"{m.as_dict()[p] / 1e9:>12.2f}" for m in rows.values()))
    return lines


def _detector_flops(name, cfg, k, reset_every, radius, reset, prune_from, conv):
    from rgtp.core.selection import schedule_name
    from rgtp.families.detection.flops import block_keeps, frame_macs, schedule_macs

    bb = cfg.backbone
    k = k if k is not None else bb.num_tokens
    if isinstance(k, int):
        k = _check_k(k, bb)
    else:
        block_keeps(bb, k)  # a keep schedule: one K per stage of the default cut
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
        *_table(rows),
        f"average backbone GFLOPs per frame: {rows['average'].backbone / 1e9:.1f} "
        f"({100 * report['average_over_dense']:.1f} % of dense)",
    ]
    return report, "\n".join(text)


def _classifier_flops(name, cfg, k, reset_every, radius, reset, prune_from, conv):
    from rgtp.core.selection import checkerboard_size
    from rgtp.families.classification.flops import KINETICS_VIEWS, view_macs

    sp = cfg.spatial
    k = _check_k(k, sp)
    views = KINETICS_VIEWS[0] * KINETICS_VIEWS[1]
    reset_every = max(reset_every, 1)
    board = checkerboard_size(sp.grid) if reset == "checkerboard" else None
    rows = {"dense": view_macs(cfg), "pruned": view_macs(cfg, k, reset_every, board)}
    report = {
        "model": name,
        "size": sp.img_size,
        "frames": cfg.num_frames,
        "num_tokens": sp.num_tokens,
        "k": k,
        "reset_every": reset_every,
        "reset": reset,
        "convention": conv,  # both count the same: no windowed blocks
        "views": views,
        **{
            setting: {f"{part}_gmacs_per_view": v / 1e9 for part, v in m.as_dict().items()}
            for setting, m in rows.items()
        },
        "dense_tmacs_per_video": rows["dense"].total * views / 1e12,
        "pruned_tmacs_per_video": rows["pruned"].total * views / 1e12,
    }
    text = [
        f"{name} at {sp.img_size}x{sp.img_size}, {cfg.num_frames} frames "
        f"({cfg.num_steps} time steps of {sp.tubelet}): N = {sp.num_tokens} patch tokens + CLS, "
        f"keep K = {k}, a {reset} reset every {reset_every} time steps",
        f"GFLOPs, {conv} convention (paper and executed agree for this model): "
        "multiply-accumulates, x1e9, per view (one clip)",
        *_table(rows),
        f"per video over {KINETICS_VIEWS[0]} clips x {KINETICS_VIEWS[1]} crops = {views} views: "
        f"dense {report['dense_tmacs_per_video']:.3f} TFLOPs, pruned "
        f"{report['pruned_tmacs_per_video']:.3f} TFLOPs "
        f"({100 * rows['pruned'].total / rows['dense'].total:.1f} % of dense)",
    ]
    return report, "\n".join(text)


# ------------------------------------------------------------------- check, run, eval


def check_text(report, atol: float, rtol: float) -> str:
    """A `CheckReport` (`rgtp.export.check.check_package`) as `rgtp check` prints it: each
    problem and note, a table of the graphs' errors, the verdict."""
    lines = [f"FAIL {problem}" for problem in report.problems]
    lines += [f"note: {note}" for note in report.notes]
    if report.graphs:
        lines.append(f"{'graph':<16}{'max abs err':>14}{'max rel err':>14}  result")
        for g in report.graphs:
            status = "ok" if g.passed else f"FAIL (atol {atol}, rtol {rtol})"
            lines.append(f"{g.name:<16}{g.max_abs:>14.3g}{g.max_rel:>14.3g}  {status}")
    lines.append("check passed" if report.passed else "check FAILED")
    return "\n".join(lines)


def run_text(
    summary: dict,
    backend: str,
    device: str,
    num_tokens: int,
    paths: Mapping[str, Path],
    skipped: int | None = None,
) -> str:
    """A run's `summarize` as one line: frames, steps, mean K, ms per step, files written;
    `skipped` (given when undecodable frames are skipped) how many were."""
    ms = summary["ms_per_step"]
    skips = f", skipped {skipped} undecodable frames" if skipped is not None else ""
    return (
        f"{summary['frames']} frames, {summary['steps']} steps on {backend} ({device}){skips}: "
        f"mean K {summary['mean_k']:.0f} of {num_tokens}, {ms['total']:.1f} ms/step "
        f"({ms['outside_engine']:.1f} ms outside engine calls); wrote "
        f"{', '.join(str(p) for p in dict.fromkeys(paths.values()))}"
    )


def write_table(
    title: str,
    table: str,
    records: list,
    json_path: str | Path | None = None,
    markdown_path: str | Path | None = None,
) -> None:
    """An evaluation's records as JSON and its table as Markdown under `title`, where asked."""
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(records, indent=1))
    if markdown_path:
        Path(markdown_path).parent.mkdir(parents=True, exist_ok=True)
        Path(markdown_path).write_text(f"# {title}\n\n{table}\n")
