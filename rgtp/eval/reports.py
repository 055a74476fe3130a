"""The reports rgtp prints: a package check, a run's summary, an evaluation table written as
JSON and Markdown, and the tables a family's FLOPs report is made of (the report itself is
the family's `flops_report` tool). Each returns what it shows (figures and text), so the
API gives the same report the command line prints."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

# ------------------------------------------------------------------------------ flops


def check_k(k: int | Sequence[int] | None, enc) -> int:
    """One K for encoder `enc` (None: all N), refused outside 1..N or as a keep schedule."""
    k = k if k is not None else enc.num_tokens
    if not isinstance(k, int):
        raise ValueError("keep schedules (one K per stage) are for detectors; give one --keep K")
    if not 0 < k <= enc.num_tokens:
        raise ValueError(f"--keep must be in 1..{enc.num_tokens} (N at {enc.img_size} px)")
    return k


def macs_table(rows: Mapping) -> list[str]:
    """MAC counts by setting (each with `as_dict()` by part) as table lines: parts down,
    settings across, GMACs."""
    lines = [f"{'part':<16}" + "".join(f"{name:>12}" for name in rows)]
    for p in next(iter(rows.values())).as_dict():
        lines.append(f"{p:<16}" + "".join(f"{m.as_dict()[p] / 1e9:>12.2f}" for m in rows.values()))
    return lines


# ------------------------------------------------------------------- check, run, eval


def check_text(report, atol: float, rtol: float) -> str:
    """A `CheckReport` (`rgtp.export.check.check_package`) as `rgtp check` prints it: each
    problem and note, a table of the graphs' errors, the package digest, the verdict."""
    lines = [f"FAIL {problem}" for problem in report.problems]
    lines += [f"note: {note}" for note in report.notes]
    if report.graphs:
        lines.append(
            f"{'graph':<16}{'max abs err':>14}{'max rel err':>14}{'rel L2 err':>12}  result"
        )
        for g in report.graphs:
            status = "ok" if g.passed else f"FAIL ({g.limit or f'atol {atol}, rtol {rtol}'})"
            lines.append(
                f"{g.name:<16}{g.max_abs:>14.3g}{g.max_rel:>14.3g}{g.rel_l2:>12.3g}  {status}"
            )
    if report.digest:
        lines.append(f"digest {report.digest}")
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
