"""The classifier's tools (`ClassificationFamily.tools`): training on SynthMotion, top-1 on
its held-out clips, fine-tuning the temporal transformer on pruned features, the FLOPs report
and the demo. They drive the runtime, so they sit above it and load when a command asks for
them (`rgtp.package.family.tool`). Training and the demo are imported when called: they
need the `train` and `viz` extras, which `rgtp flops` does not."""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path

from torch import nn

from rgtp.eval.request import EvalRequest
from rgtp.families.classification.data import data_config, heldout_clips
from rgtp.families.classification.tools.classify_pruned import (
    classifier_table,
    format_table,
    rows_as_dicts,
)
from rgtp.families.classification.tools.finetune_temporal import (
    FinetuneConfig,
    finetune_temporal,
    finetuned_path,
    load_temporal,
)
from rgtp.families.classification.tools.reports import flops_report
from rgtp.package.family import shipped_weights

logger = logging.getLogger(__name__)

__all__ = ["evaluate_model", "finetune", "flops_report", "run_demo", "train_model"]

# what the classifier's training takes besides `ViViTTrainConfig` fields
_TRAIN_EXTRAS = ("heldout", "cache_dir", "init")


def train_model(name: str, settings: Mapping, out: Path, progress: bool = True) -> str:
    """Train the named classifier from scratch with `settings` (`ViViTTrainConfig` fields,
    and `heldout` clips scored at the end (600), `cache_dir` for the rendered clips
    (out/cache), `init`: weights to start the temporal phase from, skipping the joint one)
    into `out`; what was done, in a line."""
    from rgtp.families.classification.tools import train

    extras = {n: settings[n] for n in _TRAIN_EXTRAS if n in settings}
    tc = train.ViViTTrainConfig(
        model=name, **{n: v for n, v in settings.items() if n not in _TRAIN_EXTRAS}
    )
    init = Path(extras["init"]) if extras.get("init") else None
    if init and not tc.temporal_steps:
        raise ValueError(
            "--init skips the joint phase: give the temporal phase steps (--temporal-steps N)"
        )
    summary = train.train(
        tc,
        out,
        cache_dir=Path(extras.get("cache_dir") or "out/cache"),
        heldout=extras.get("heldout", 600),
        progress=progress,
        init=init,
    )
    held = summary.get("heldout", {})
    steps = f"{tc.temporal_steps} temporal steps from {init}" if init else f"{tc.steps} steps"
    return (
        f"trained {steps} in {summary['minutes']:.1f} min; held-out top-1 "
        f"{held.get('dense', float('nan')):.3f} over {held.get('clips', 0)} clips; wrote {out}"
    )


def evaluate_model(model: nn.Module, request: EvalRequest) -> tuple[str, str, list[dict]]:
    """Top-1 on SynthMotion's held-out clips: dense, pruned at each K of `request.ks`, and
    pruned with the temporal transformer fine-tuned at that K where its file exists
    (`finetune`; `request.finetuned_dir` says where to look, else beside the weights), with
    GFLOPs per clip: the title, the table and its rows. It runs the PyTorch reference
    engines."""
    if any(not isinstance(k, int) for k in request.ks):
        raise ValueError("keep schedules (one K per stage) are for detectors; give single K")
    if request.backend != "torch":
        logger.info("note: the classifier table runs the PyTorch reference engines")
    weights = Path(request.weights) if request.weights else shipped_weights(request.name)
    finetuned = {}
    for k in request.ks:
        path = finetuned_path(weights, k) if weights else None
        if path is not None and request.finetuned_dir:
            path = Path(request.finetuned_dir) / path.name
        if path is not None and path.exists():
            finetuned[k] = load_temporal(copy.deepcopy(model), path).eval()
            logger.info("fine-tuned temporal transformer at K=%d: %s", k, path)
    clips = heldout_clips(request.clips, data_config(model.cfg))
    rows = classifier_table(
        model,
        clips,
        list(request.ks),
        finetuned,
        max(request.reset_every, 1),
        request.reset,
        progress=request.progress,
        radius=request.radius,
        pruning=request.pruning or model.cfg.pruning,
        dense=request.dense,
    )
    title = f"{request.name} SynthMotion {model.cfg.spatial.img_size}"
    return title, format_table(rows, len(clips)), rows_as_dicts(rows)


def finetune(
    model: nn.Module,
    weights: Path | None,
    settings: Mapping,
    out: Path | None = None,
    progress: bool = True,
) -> str:
    """Fine-tune `model`'s temporal transformer on its pruned encoder's outputs with
    `settings` (`FinetuneConfig` fields; `k` required) into `out` (None: beside `weights`,
    NAME.temporal-kK.safetensors); what was done, in a line."""
    fc = FinetuneConfig(**settings)
    if out is None:
        if weights is None:
            raise ValueError("no weights to write the fine-tuned file beside: give an output")
        out = finetuned_path(Path(weights), fc.k)
    log = finetune_temporal(model, fc, Path(out), progress=progress)
    return (
        f"fine-tuned the temporal transformer at K={fc.k} on {fc.clips} clips "
        f"({fc.epochs} epochs, {log['minutes']:.1f} min); wrote {out}"
    )


def run_demo(
    out: str | Path,
    k_fraction: float | None = None,
    sizes: Mapping | None = None,
    progress: bool = True,
) -> dict:
    """`rgtp demo --model vivit-small`: vivit-small end to end (`demo.run_demo`) at K =
    `k_fraction` N (None: 0.4), measured on `sizes["clips"]` held-out clips (60)."""
    from rgtp.families.classification.tools import demo

    return demo.run_demo(out, k_fraction or 0.4, (sizes or {}).get("clips", 60), progress)
