"""Running a stream over a whole video and writing what it did."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rgtp.runtime.stream import FrameResult, Stream


def run_stream(
    stream: Stream, frames: Iterable[np.ndarray], total: int | None = None, progress: bool = True
) -> list[FrameResult]:
    """Step the stream through every frame, with a progress bar."""
    results = []
    with tqdm(frames, total=total, desc="frames", unit="frame", disable=not progress) as bar:
        for frame in bar:
            r = stream.step(frame)
            results.append(r)
            bar.set_postfix(K=r.k, ms=f"{r.timings['total']:.0f}")
    return results


def summarize(results: list[FrameResult], skip: int = 1) -> dict:
    """Per-frame means (the first `skip` frames are warm-up and left out of timings)."""
    timed = results[skip:] or results
    parts = sorted({p for r in timed for p in r.timings})
    return {
        "frames": len(results),
        "reset_frames": sum(r.reset for r in results),
        "mean_k": statistics.fmean(r.k for r in results),
        "ms_per_frame": {p: statistics.fmean(r.timings.get(p, 0.0) for r in timed) for p in parts},
    }


def write_results(
    out: str | Path, results: list[FrameResult], class_names: tuple[str, ...] = ()
) -> dict[str, Path]:
    """detections.json (per-frame boxes), frames.json (per-frame K, reset, timings),
    summary.json; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / f"{name}.json" for name in ("detections", "frames", "summary")}
    detections = [
        {"frame": r.index, "detections": r.detections.to_list(class_names)} for r in results
    ]
    frames = [
        {"frame": r.index, "k": r.k, "reset": r.reset, "timings_ms": r.timings} for r in results
    ]
    paths["detections"].write_text(json.dumps(detections, indent=1))
    paths["frames"].write_text(json.dumps(frames, indent=1))
    paths["summary"].write_text(json.dumps(summarize(results), indent=1))
    return paths
