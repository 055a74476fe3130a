"""`rgtp demo`: the whole product on the shipped model and the CPU, end to end.

Export vitdet-small to ONNX, run it on ONNX Runtime over a held-out SynthVID video dense and
pruned, write the importance-overlay video, PNG frames and a K/latency plot, then measure
mAP50, GFLOPs and ms/frame on held-out sequences and print the table.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from rgtp.core.selection import FixedKeep
from rgtp.data.synthvid import CLASSES, SynthVIDConfig, generate_sequence, heldout_seeds
from rgtp.export.ensure import ensure_package
from rgtp.families import get_config, shipped_weights
from rgtp.families.detection.checkpoints import load_weights
from rgtp.families.detection.detector import Detector
from rgtp.families.detection.tools.evaluate import EvalSetting, evaluate, results_table
from rgtp.package.plan import StagePlan
from rgtp.runtime import Pipeline
from rgtp.runtime.run import run_stream, write_results
from rgtp.viz.record import OverlayWriter

logger = logging.getLogger(__name__)

MODEL = "vitdet-small"


def run_demo(
    out: str | Path,
    k_fraction: float = 0.3,
    sequences: int = 8,
    frames: int = 64,
    progress: bool = True,
) -> dict:
    start = time.perf_counter()
    out = Path(out)
    weights = shipped_weights(MODEL)
    if weights is None:
        raise FileNotFoundError(f"the package ships no weights for {MODEL} (rgtp/weights/)")
    detector = Detector(get_config(MODEL))
    load_weights(detector, weights)
    n = detector.cfg.backbone.num_tokens
    k = round(k_fraction * n)
    plan = StagePlan.create(detector.cfg, [k], "per-global")

    logger.info("1/4 export %s to ONNX", MODEL)
    # a fresh export every time: this step is part of what the demo shows
    package = ensure_package(
        detector, plan, out / "package", symbolic=False, fresh=True, progress=progress
    )
    pipe = Pipeline.load(package, backend="ort")

    logger.info("2/4 run one held-out video, dense and pruned, on ONNX Runtime (CPU)")
    seq = generate_sequence(heldout_seeds(1)[0], SynthVIDConfig(num_frames=frames))
    dense = run_stream(pipe.new_stream(), seq.frames, len(seq.frames), progress)
    pruned = run_stream(pipe.new_stream(policy=FixedKeep(k)), seq.frames, len(seq.frames), progress)
    write_results(out / "dense", dense, CLASSES)
    write_results(out / "pruned", pruned, CLASSES)

    logger.info("3/4 write the importance-overlay video, frames and timeline plot")
    grid = detector.cfg.backbone.grid
    video = out / "pruned_overlay.mp4"
    with OverlayWriter(video, out / "frames", grid, CLASSES, fps=8, png_every=8) as pictures:
        for frame, result in zip(seq.frames, pruned, strict=True):
            pictures.add(frame, result)
        runs = {"dense": dense, f"pruned K={k}": pruned}
        timeline = pictures.finish(runs, out / "timeline.png").timeline

    logger.info("4/4 evaluate on %d held-out sequences x %d frames", sequences, frames)
    records = evaluate(
        pipe, [EvalSetting(None), EvalSetting(k)], sequences, frames, progress=progress
    )
    table = results_table(records, f"{MODEL} SynthVID {detector.cfg.backbone.img_size}")
    (out / "summary.md").write_text(f"# rgtp demo\n\n{table}\n")
    summary = {
        "records": [r.to_dict() for r in records],
        "video": str(video),
        "timeline": str(timeline),
        "seconds": time.perf_counter() - start,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    # what `rgtp demo` prints (not in summary.json)
    summary["report"] = (
        f"\n{table}\n\nwrote {video}, {timeline}, {out / 'frames'}/, {out / 'summary.md'} "
        f"in {summary['seconds']:.0f} s"
    )
    return summary
