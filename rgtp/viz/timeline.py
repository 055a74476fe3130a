"""K and latency over the frames of a run (matplotlib, written to PNG)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on edge boxes or CI
import matplotlib.pyplot as plt

from rgtp.runtime.stream import FrameResult


def plot_timeline(runs: Mapping[str, Sequence[FrameResult]], path: str | Path) -> Path:
    """One line per run (e.g. dense, pruned): tokens kept and ms per frame, with the time
    spent outside engine calls shaded; reset frames marked."""
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
        resets = [r.index for r in results if r.reset]
        ax_k.plot(resets, [results[i].k for i in resets], "v", color=line.get_color(), ms=4)
    ax_k.set_ylabel("tokens kept (K)")
    ax_k.legend(loc="center right", fontsize=8)
    ax_ms.set_ylabel("ms per frame")
    ax_ms.set_xlabel("frame (triangles: dense reset frames)")
    ax_ms.legend(loc="upper right", fontsize=8)
    ax_ms.set_ylim(bottom=0)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
