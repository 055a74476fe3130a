"""The reports rgtp prints: a package check, a run's summary, an evaluation table written as
JSON and Markdown, and the tables a family's FLOPs report is made of (the report itself is
the family's `flops_report` tool). Each returns what it shows (figures and text), so the
API gives the same report the command line prints."""

from __future__ import annotations

import json
import math
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


def check_document(package: str | Path, report, atol: float, rtol: float) -> dict:
    """A `CheckReport` as `rgtp check --json` writes it (rgtp/cli/schemas/check.json); an
    error that is not finite (a graph's NaN or inf output) as null, which JSON can hold."""

    def finite(x: float) -> float | None:
        return float(x) if math.isfinite(x) else None

    return {
        "package": str(package),
        "passed": report.passed,
        "digest": report.digest,
        "atol": atol,
        "rtol": rtol,
        "problems": list(report.problems),
        "notes": list(report.notes),
        "graphs": [
            {
                "name": g.name,
                "max_abs": finite(g.max_abs),
                "max_rel": finite(g.max_rel),
                "rel_l2": finite(g.rel_l2),
                "passed": bool(g.passed),
                "limit": g.limit,
            }
            for g in report.graphs
        ],
    }


def run_text(
    summary: dict,
    backend: str,
    device: str,
    num_tokens: int,
    paths: Mapping[str, Path],
    skipped: int | None = None,
) -> str:
    """A run's `summarize` as `rgtp run` prints it: a line of frames, steps, mean K and the
    files written (`skipped`, given when undecodable frames are skipped: how many were), then
    per part of a step its mean and p50/p95/p99 in ms, the warm-up step left out."""
    skips = f", skipped {skipped} undecodable frames" if skipped is not None else ""
    lines = [
        f"{summary['frames']} frames, {summary['steps']} steps on {backend} ({device}){skips}: "
        f"mean K {summary['mean_k']:.0f} of {num_tokens}; wrote "
        f"{', '.join(str(p) for p in dict.fromkeys(paths.values()))}",
        f"{'ms per step':<16}{'mean':>9}{'p50':>9}{'p95':>9}{'p99':>9}",
    ]
    means, percentiles = summary["ms_per_step"], summary["ms_percentiles"]
    # the step's whole and its split between engine calls and the rest first, then its parts
    first = ("total", "engine", "outside_engine")
    for part in sorted(means, key=lambda p: (first.index(p) if p in first else 3, p)):
        q = percentiles[part]
        lines.append(
            f"{part:<16}{means[part]:>9.2f}{q['p50']:>9.2f}{q['p95']:>9.2f}{q['p99']:>9.2f}"
        )
    return "\n".join(lines)


def write_json(path: str | Path, document: object) -> Path:
    """`document` as JSON at `path`, written whole or not at all: into a temporary file
    beside it, then renamed over it (a reader never sees half a file, and a failed write
    leaves what was there). Non-finite floats are refused (JSON has none)."""
    import os
    import tempfile

    path = Path(path)
    text = json.dumps(document, indent=1, allow_nan=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # as open() would create it, not mkstemp's 0600
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_table(
    title: str,
    table: str,
    records: list,
    json_path: str | Path | None = None,
    markdown_path: str | Path | None = None,
) -> None:
    """An evaluation's records as JSON and its table as Markdown under `title`, where asked."""
    if json_path:
        write_json(json_path, records)
    if markdown_path:
        Path(markdown_path).parent.mkdir(parents=True, exist_ok=True)
        Path(markdown_path).write_text(f"# {title}\n\n{table}\n")
