"""Running a stream over a whole video and writing what it did."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rgtp.runtime.stream import FrameResult, Stream


class RunError(RuntimeError):
    """A run stopped at a frame; the results of the frames before it are written."""


def run_stream(
    stream: Stream,
    frames: Iterable[np.ndarray],
    total: int | None = None,
    progress: bool = True,
    results: list[FrameResult] | None = None,
) -> list[FrameResult]:
    """Step the stream through every frame, with a progress bar; results are appended to
    `results` (a new list if None) as they come, so a caller keeps them if a frame fails."""
    results = [] if results is None else results
    with tqdm(frames, total=total, desc="frames", unit="frame", disable=not progress) as bar:
        for frame in bar:
            r = stream.step(frame)
            results.append(r)
            bar.set_postfix(K=r.k, ms=f"{r.timings['total']:.0f}")
    return results


def run_and_write(
    stream: Stream,
    frames: Iterable[np.ndarray],
    out: str | Path,
    class_names: tuple[str, ...] = (),
    total: int | None = None,
    progress: bool = True,
    skipped: Sequence[int] = (),
) -> tuple[list[FrameResult], dict[str, Path]]:
    """`run_stream`, then `write_results`. When a frame fails (an undecodable video frame,
    an engine error) or the run is interrupted, the frames before it are written first and
    the error is raised as RunError (an interrupt as itself), saying where they are.

    skipped: video positions of frames the source skipped; read when writing, so a reader's
    live list (`VideoReader.skipped`) can be passed before it has read anything.
    """
    results: list[FrameResult] = []
    try:
        run_stream(stream, frames, total, progress, results)
    except BaseException as e:
        paths = write_results(out, results, class_names, skipped)
        if not isinstance(e, Exception):
            raise
        raise RunError(
            f"{e}; the {len(results)} frames before it are written to {paths['detections']} "
            f"and {paths['frames']}"
        ) from e
    return results, write_results(out, results, class_names, skipped)


def summarize(results: list[FrameResult], skip: int = 1, skipped: Sequence[int] = ()) -> dict:
    """Per-frame means (the first `skip` frames are warm-up and left out of timings), and
    the video positions of the frames the source skipped as undecodable."""
    timed = results[skip:] or results
    parts = sorted({p for r in timed for p in r.timings})
    return {
        "frames": len(results),
        "reset_frames": sum(r.reset for r in results),
        "mean_k": statistics.fmean(r.k for r in results) if results else None,
        "ms_per_frame": {p: statistics.fmean(r.timings.get(p, 0.0) for r in timed) for p in parts},
        "skipped_frames": len(skipped),
        "skipped_positions": list(skipped),
    }


def write_results(
    out: str | Path,
    results: list[FrameResult],
    class_names: tuple[str, ...] = (),
    skipped: Sequence[int] = (),
) -> dict[str, Path]:
    """detections.json (per-frame boxes), frames.json (per-frame K, reset, timings),
    summary.json; returns their paths. "frame" is the frame's position in the video, which
    differs from the stream's count once the source skipped frames (`skipped`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / f"{name}.json" for name in ("detections", "frames", "summary")}
    gaps = set(skipped)
    positions = (p for p in range(len(results) + len(gaps)) if p not in gaps)
    rows = list(zip(positions, results, strict=False))
    detections = [{"frame": p, "detections": r.detections.to_list(class_names)} for p, r in rows]
    frames = [{"frame": p, "k": r.k, "reset": r.reset, "timings_ms": r.timings} for p, r in rows]
    paths["detections"].write_text(json.dumps(detections, indent=1))
    paths["frames"].write_text(json.dumps(frames, indent=1))
    paths["summary"].write_text(json.dumps(summarize(results, skipped=skipped), indent=1))
    return paths
