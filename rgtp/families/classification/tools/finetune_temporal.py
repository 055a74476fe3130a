"""Fine-tune a ViViT's temporal transformer on its pruned spatial encoder's outputs (docs/method.md,
"Video classification: ViViT"; the authors: Kinetics-400, 10 epochs at lr 2e-6), leaving the spatial
encoder untouched.

Pruning changes the per-step CLS features the temporal transformer reads; it was trained on
dense ones. The training clips run once through the pruned runtime at the chosen K (as
they would in deployment: tracking, rollout, resets), their step features are kept, and
only the temporal transformer and classifier are trained on them. The result is written
beside the original weights as `NAME.temporal-kK.safetensors`, holding the `temporal.*`
tensors only (`load_temporal`).

`rgtp finetune-temporal --model vivit-small --keep 26`
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from rgtp.core.selection import checkerboard_size
from rgtp.data.synthmotion import training_clips
from rgtp.families.classification.data import data_config
from rgtp.families.classification.tools.classify_pruned import pruned_run
from rgtp.families.classification.vivit import ViViT
from rgtp.models.checkpoint_files import CheckpointError
from rgtp.runtime import Pipeline

logger = logging.getLogger(__name__)

PREFIX = "temporal."


@dataclass(frozen=True)
class FinetuneConfig:
    """k: patch tokens kept per time step (the K the temporal transformer will see);
    clips: training clips run through the pruned encoder; epochs, lr, batch_size: the
    temporal transformer's training (AdamW, cosine to zero, no weight decay)."""

    k: int
    reset_every: int = 8
    reset: str = "dense"
    clips: int = 480
    epochs: int = 10
    lr: float = 1e-4
    batch_size: int = 32
    seed: int = 0


def finetuned_path(weights: Path, k: int) -> Path:
    """Where the fine-tuned temporal transformer of `weights` at K = k is written."""
    return weights.with_name(f"{weights.stem}.temporal-k{k}.safetensors")


def finetune_temporal(model: ViViT, fc: FinetuneConfig, out: Path, progress: bool = True) -> dict:
    """Fine-tune `model.temporal` in place on pruned features; write its tensors to `out`
    (with a JSON log beside it, `out` with suffix .json). Returns the log."""
    start = time.time()
    spatial_before = {k: v.clone() for k, v in model.spatial.state_dict().items()}
    data_cfg = data_config(model.cfg)
    clips = list(itertools.islice(training_clips(fc.seed, data_cfg), fc.clips))
    buckets = sorted({fc.k, checkerboard_size(model.cfg.spatial.grid)})
    run = pruned_run(
        Pipeline.from_model(model.eval(), buckets),
        clips,
        fc.k,
        fc.reset_every,
        fc.reset,
        progress,
        f"pruned features K={fc.k}",
    )
    features, labels = run.features, torch.tensor([c.label for c in clips])
    extract_minutes = (time.time() - start) / 60
    log = fit_temporal(model, features, labels, fc, progress)
    # what the authors fine-tune is the temporal transformer alone: prove it
    after = model.spatial.state_dict()
    assert all(torch.equal(after[k], v) for k, v in spatial_before.items())

    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        PREFIX + k: v.detach().contiguous().clone() for k, v in model.temporal.state_dict().items()
    }
    summary = {
        "finetune": asdict(fc),
        "model": model.cfg.name,
        # the features were pruned with these settings: fine-tuned weights match them only
        "pruning": asdict(model.cfg.pruning),
        "pruned_mean_k": run.mean_k,
        "extract_minutes": extract_minutes,
        "minutes": (time.time() - start) / 60,
        "log": log,
    }
    metadata = {"finetune": json.dumps(asdict(fc)), "pruning": json.dumps(summary["pruning"])}
    save_file(tensors, str(out), metadata=metadata)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    return summary


def fit_temporal(
    model: ViViT, features: torch.Tensor, labels: torch.Tensor, fc: FinetuneConfig, progress: bool
) -> list[dict]:
    """Train `model.temporal` in place on step features (clips, s, C) and labels (clips,)
    with `fc`'s recipe; leaves it in eval mode. Returns the per-epoch log."""
    torch.manual_seed(fc.seed)
    temporal = model.temporal.train()
    opt = torch.optim.AdamW(temporal.parameters(), lr=fc.lr, weight_decay=0.0)
    steps = fc.epochs * -(-len(labels) // fc.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    log = []
    for epoch in range(fc.epochs):
        order = torch.randperm(len(labels))
        total, right = 0.0, 0
        for i in range(0, len(labels), fc.batch_size):
            idx = order[i : i + fc.batch_size]
            logits = temporal(features[idx])
            loss = F.cross_entropy(logits, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            right += int((logits.argmax(-1) == labels[idx]).sum())
        log.append({"epoch": epoch + 1, "loss": total / len(labels), "top1": right / len(labels)})
        if progress:
            logger.info(
                "epoch %d: loss %.4f, train top-1 %.3f", epoch + 1, log[-1]["loss"], log[-1]["top1"]
            )
    temporal.eval()
    return log


def load_temporal(model: ViViT, path: str | Path) -> ViViT:
    """Load a fine-tuned temporal transformer (`finetune_temporal`'s file) into `model`;
    every temporal tensor must be there, at its shape."""
    tensors = load_file(str(path))
    own = {PREFIX + k: v for k, v in model.temporal.state_dict().items()}
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    bad = sorted(k for k in set(own) & set(tensors) if own[k].shape != tensors[k].shape)
    if missing or extra or bad:
        raise CheckpointError(
            f"{path}: not this model's temporal transformer (missing {missing[:4]}, "
            f"unexpected {extra[:4]}, other shapes {bad[:4]})"
        )
    model.temporal.load_state_dict({k.removeprefix(PREFIX): v for k, v in tensors.items()})
    return model
