"""`rgtp demo --model vivit-small`: the classifier family end to end on the shipped model
and the CPU.

Export vivit-small to ONNX, run two held-out SynthMotion clips through ONNX Runtime dense
and pruned (per time step: the kept tokens, the top class), write the importance-overlay
video, PNG frames and a K/latency plot, then measure top-1 and GFLOPs per clip on
held-out clips in the paper's table form (dense, pruned, and pruned with the temporal
transformer fine-tuned at that K when its file is shipped).
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import time
from pathlib import Path

from rgtp.core.selection import FixedKeep
from rgtp.export.ensure import ensure_package
from rgtp.families import get_config, shipped_weights
from rgtp.families.classification.data import data_config, heldout_clips
from rgtp.families.classification.tools.classify_pruned import (
    classifier_table,
    format_table,
    rows_as_dicts,
)
from rgtp.families.classification.tools.finetune_temporal import finetuned_path, load_temporal
from rgtp.package.family import family_of
from rgtp.package.plan import StagePlan
from rgtp.runtime import Pipeline
from rgtp.runtime.run import run_stream, write_results
from rgtp.viz.record import OverlayWriter

logger = logging.getLogger(__name__)

MODEL = "vivit-small"


def run_demo(
    out: str | Path, k_fraction: float = 0.4, clips: int = 60, progress: bool = True
) -> dict:
    start = time.perf_counter()
    out = Path(out)
    weights = shipped_weights(MODEL)
    if weights is None:
        raise FileNotFoundError(f"the package ships no weights for {MODEL} (rgtp/weights/)")
    cfg = get_config(MODEL)
    family = family_of(cfg)
    model = family.build(cfg)
    family.load_weights(model, weights)
    model.eval()
    n = cfg.spatial.num_tokens
    k = round(k_fraction * n)

    logger.info("1/4 export %s to ONNX", MODEL)
    plan = StagePlan.create(cfg, [k], "per-global")
    package = ensure_package(
        model, plan, out / "package", symbolic=False, fresh=True, progress=progress
    )
    pipe = Pipeline.load(package, backend="ort")

    logger.info("2/4 run two held-out clips, dense and pruned, on ONNX Runtime (CPU)")
    shown = heldout_clips(2, data_config(cfg))
    frames = list(itertools.chain.from_iterable(c.frames for c in shown))
    dense = run_stream(pipe.new_stream(), frames, len(frames), progress)
    pruned = run_stream(pipe.new_stream(policy=FixedKeep(k)), frames, len(frames), progress)
    write_results(out / "dense", dense, cfg.class_names)
    write_results(out / "pruned", pruned, cfg.class_names)

    logger.info("3/4 write the importance-overlay video, frames and timeline plot")
    grid = cfg.spatial.grid
    video = out / "pruned_overlay.mp4"
    # a picture per time step (two frames); every second one as PNG
    with OverlayWriter(video, out / "frames", grid, fps=4, png_every=2) as pictures:
        for frame, result in zip(frames, pruned, strict=True):
            pictures.add(frame, result)
        runs = {"dense": dense, f"pruned K={k}": pruned}
        timeline = pictures.finish(runs, out / "timeline.png").timeline

    logger.info("4/4 evaluate on %d held-out clips (PyTorch reference engines)", clips)
    finetuned = {}
    tuned_file = finetuned_path(weights, k)
    if tuned_file.exists():
        finetuned[k] = load_temporal(copy.deepcopy(model), tuned_file).eval()
    rows = classifier_table(
        model, heldout_clips(clips, data_config(cfg)), [k], finetuned, progress=progress
    )
    table = format_table(rows, clips)
    (out / "summary.md").write_text(f"# rgtp demo: {MODEL}\n\n{table}\n")
    summary = {
        "clips_shown": [
            {
                "label": cfg.class_names[c.label],
                "dense": _last(dense, i),
                "pruned": _last(pruned, i),
            }
            for i, c in enumerate(shown)
        ],
        "table": rows_as_dicts(rows),
        "video": str(video),
        "timeline": str(timeline),
        "seconds": time.perf_counter() - start,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    shown = [
        f"clip of '{c['label']}': dense says {c['dense']}, pruned says {c['pruned']}"
        for c in summary["clips_shown"]
    ]
    # what `rgtp demo` prints (not in summary.json)
    summary["report"] = "\n".join(
        [
            "",
            *shown,
            table,
            f"\nwrote {video}, {timeline}, {out / 'frames'}/, {out / 'summary.md'} "
            f"in {summary['seconds']:.0f} s",
        ]
    )
    return summary


def _last(results: list, clip: int) -> str | None:
    """The top class scored when the `clip`-th clip of the run was complete."""
    steps = [r for r in results if r is not None]
    per_clip = len(steps) // 2
    top = steps[(clip + 1) * per_clip - 1].top
    return None if top is None else f"{top[0]} ({top[1]:.2f})"
