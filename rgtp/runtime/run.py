"""Running a stream over a whole video and writing what it did."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rgtp.package.family import StepResult
from rgtp.runtime.stream import Stream


class RunError(RuntimeError):
    """A run stopped at a frame; the results of the frames before it are written."""


def run_stream(
    stream: Stream,
    frames: Iterable[np.ndarray],
    total: int | None = None,
    progress: bool = True,
    results: list[StepResult | None] | None = None,
) -> list[StepResult | None]:
    """Step the stream through every frame, with a progress bar; results are appended to
    `results` (a new list if None) as they come, one per frame (None for a frame that only
    filled a classifier's time step), so a caller keeps them if a frame fails."""
    results = [] if results is None else results
    with tqdm(frames, total=total, desc="frames", unit="frame", disable=not progress) as bar:
        for frame in bar:
            r = stream.step(frame)
            results.append(r)
            if r is not None:
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
) -> tuple[list[StepResult | None], dict[str, Path]]:
    """`run_stream`, then `write_results`. When a frame fails (an undecodable video frame,
    an engine error) or the run is interrupted, the frames before it are written first and
    the error is raised as RunError (an interrupt as itself), saying where they are.

    skipped: video positions of frames the source skipped; read when writing, so a reader's
    live list (`VideoReader.skipped`) can be passed before it has read anything.
    """
    results: list[StepResult | None] = []
    try:
        run_stream(stream, frames, total, progress, results)
    except BaseException as e:
        paths = write_results(out, results, class_names, skipped)
        if not isinstance(e, Exception):
            raise
        raise RunError(
            f"{e}; the {len(results)} frames before it are written to {paths['outputs']} "
            f"and {paths['frames']}"
        ) from e
    return results, write_results(out, results, class_names, skipped)


PERCENTILES = (50, 95, 99)


def summarize(
    results: Sequence[StepResult | None], skip: int = 1, skipped: Sequence[int] = ()
) -> dict:
    """Per-step means and p50/p95/p99 of every timed part in ms (the first `skip` steps are
    warm-up and left out of timings; a part a step did not run counts 0 ms), and the video
    positions of the frames the source skipped as undecodable."""
    steps = [r for r in results if r is not None]
    timed = steps[skip:] or steps
    parts = sorted({p for r in timed for p in r.timings})
    ms = {p: np.array([r.timings.get(p, 0.0) for r in timed]) for p in parts}
    return {
        "frames": len(results),
        "steps": len(steps),
        "reset_steps": sum(r.reset for r in steps),
        # tokens per stage averaged (a keep schedule keeps fewer in later stages)
        "mean_k": statistics.fmean(_stage_mean(r) for r in steps) if steps else None,
        "ms_per_step": {p: float(v.mean()) for p, v in ms.items()},
        "ms_percentiles": {
            p: {f"p{q}": float(np.percentile(v, q)) for q in PERCENTILES} for p, v in ms.items()
        },
        "skipped_frames": len(skipped),
        "skipped_positions": list(skipped),
    }


def _stage_mean(result: StepResult) -> float:
    return statistics.fmean(result.stage_k) if result.stage_k else float(result.k)


def write_results(
    out: str | Path,
    results: Sequence[StepResult | None],
    class_names: tuple[str, ...] = (),
    skipped: Sequence[int] = (),
) -> dict[str, Path]:
    """The step outputs (detections.json for a detector, classes.json for a classifier:
    `output_file`), frames.json (per step: K, reset, timings) and summary.json; returns
    their paths, the outputs' as "outputs" (and under its own name). "frame" is the video
    position of the step's last frame, which differs from the stream's count once the
    source skipped frames (`skipped`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    gaps = set(skipped)
    positions = (p for p in range(len(results) + len(gaps)) if p not in gaps)
    rows = [(p, r) for p, r in zip(positions, results, strict=False) if r is not None]
    name = type(rows[0][1]).output_file if rows else "outputs"
    paths = {name: out / f"{name}.json" for name in (name, "frames", "summary")}
    paths["outputs"] = out / f"{name}.json"
    outputs = [{"frame": p, **r.output_json(class_names)} for p, r in rows]
    frames = [{"frame": p, "k": r.k, "reset": r.reset, "timings_ms": r.timings} for p, r in rows]
    paths["outputs"].write_text(json.dumps(outputs, indent=1))
    paths["frames"].write_text(json.dumps(frames, indent=1))
    paths["summary"].write_text(json.dumps(summarize(results, skipped=skipped), indent=1))
    return paths
