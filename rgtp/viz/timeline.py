"""K and latency over the steps of a run (frames, or a classifier's time steps; matplotlib,
written to PNG)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on edge boxes or CI
import matplotlib.pyplot as plt

from rgtp.package.family import StepResult
from rgtp.viz import describe


def plot_timeline(runs: Mapping[str, Sequence[StepResult | None]], path: str | Path) -> Path:
    """One line per run (e.g. dense, pruned): tokens kept and ms per step (a frame, or a
    classifier's time step), with the time spent outside engine calls shaded; reset steps
    marked. Runs are `stream.step`'s results; the Nones of frames that only filled a time
    step are skipped."""
    runs = {name: [r for r in results if r is not None] for name, results in runs.items()}
    first = next((rs[0] for rs in runs.values() if rs), None)
    if first is None:
        raise ValueError(
            "nothing to plot: the runs hold no step results (a classifier returns one per "
            "time step, once a tubelet's frames have all arrived)"
        )
    unit = describe(first).unit
    fig, (ax_k, ax_ms) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    for name, results in runs.items():
        idx = [r.index for r in results]
        ax_k.step(idx, [r.k for r in results], where="mid", label=name)
        total = [r.timings["total"] for r in results]
        outside = [r.timings["outside_engine"] for r in results]
        line = ax_ms.plot(idx, total, label=f"{name}: total")[0]
        ax_ms.fill_between(
            idx, 0, outside, color=line.get_color(), alpha=0.25, label=f"{name}: outside engines"
        )
        resets = [r for r in results if r.reset]
        ax_k.plot(
            [r.index for r in resets], [r.k for r in resets], "v", color=line.get_color(), ms=4
        )
    ax_k.set_ylabel("tokens kept (K)")
    ax_k.legend(loc="center right", fontsize=8)
    ax_ms.set_ylabel(f"ms per {unit}")
    ax_ms.set_xlabel(f"{unit} (triangles: reset {unit}s)")
    ax_ms.legend(loc="upper right", fontsize=8)
    ax_ms.set_ylim(bottom=0)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
