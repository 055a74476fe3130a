"""The detector's tools (`DetectionFamily.tools`): training on SynthVID, evaluation (mAP50 on
SynthVID's held-out split), the FLOPs report and the demo. They drive the runtime, so they
sit above it and load when a command asks for them (`rgtp.package.family.tool`). Training,
evaluation and the demo are imported when called: they need the `eval`, `train` and `viz`
extras, which `rgtp flops` does not."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from torch import nn

from rgtp.eval.pipeline import model_pipeline
from rgtp.eval.request import EvalRequest
from rgtp.families.detection.tools.reports import flops_report
from rgtp.train.config import TrainConfig

__all__ = ["evaluate_model", "flops_report", "run_demo", "train_model"]


def train_model(name: str, settings: Mapping, out: Path, progress: bool = True) -> str:
    """Train the named detector from scratch with `settings` (`TrainConfig` fields; the
    others keep its defaults) into `out`; what was done, in a line."""
    from rgtp.families.detection.tools import train

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: for classifiers; {name} is a detector")
    tc = TrainConfig(model=name, **settings)
    summary = train.train(tc, out, progress=progress)
    last = summary["log"][-1]
    return (
        f"trained {tc.steps} steps in {summary['minutes']:.1f} min; final losses "
        + ", ".join(f"{k} {last[k]:.3f}" for k in ("cls", "box", "ctr"))
        + f"; wrote {out}"
    )


def evaluate_model(model: nn.Module, request: EvalRequest) -> tuple[str, str, list[dict]]:
    """mAP50, GFLOPs and ms/frame of `model` on SynthVID's held-out split, dense and at each
    of `request.ks` (or, with `ablate_r`, at ks[0] for each radius and sampling): the
    title, the table and its records."""
    from rgtp.families.detection.tools.evaluate import (
        EvalSetting,
        evaluate,
        radius_table,
        results_table,
    )

    ks = list(request.ks)
    if request.pruning is not None:
        # the settings as the model's own, so that its stages return the rows they roll out
        model.cfg = dataclasses.replace(model.cfg, pruning=request.pruning)
    pipe = model_pipeline(
        model,
        [k for k in ks if isinstance(k, int)],
        [k for k in ks if not isinstance(k, int)],
        backend=request.backend,
        device=request.device,
        partition=request.partition,
        prune_from=request.prune_from,
        package=request.package,
        progress=request.progress,
    )
    pruning = pipe.plan.config.pruning
    r, reset_every = request.radius, request.reset_every
    if request.ablate_r:
        if not ks:
            raise ValueError("--ablate-r needs one --keep value to ablate at")
        settings = [
            EvalSetting(ks[0], radius, s, reset_every, pruning)
            for s in request.sampling
            for radius in request.ablate_r
        ]
    else:
        sampling = request.sampling[0]
        settings = [EvalSetting(None, r, sampling, reset_every, pruning)] if request.dense else []
        settings += [EvalSetting(k, r, sampling, reset_every, pruning) for k in ks]
    records = evaluate(pipe, settings, request.sequences, request.frames, request.progress)
    title = f"{request.name} SynthVID {pipe.plan.encoder.img_size}"
    table = radius_table(records) if request.ablate_r else results_table(records, title)
    return title, table, [r.to_dict() for r in records]


def run_demo(
    out: str | Path,
    k_fraction: float | None = None,
    sizes: Mapping | None = None,
    progress: bool = True,
) -> dict:
    """`rgtp demo`: vitdet-small end to end (`demo.run_demo`) at K = `k_fraction` N (None:
    0.3), measured on `sizes["sequences"]` held-out videos of `sizes["frames"]` frames."""
    from rgtp.families.detection.tools import demo

    sizes = sizes or {}
    return demo.run_demo(
        out, k_fraction or 0.3, sizes.get("sequences", 8), sizes.get("frames", 64), progress
    )
