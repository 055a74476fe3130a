"""Seeded, reproducible training of a detector on an endless stream of SynthVID frames."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from rgtp.data.synthvid import CLASSES, SynthVIDConfig, training_samples
from rgtp.families import get_config
from rgtp.families.detection.config import DetectorConfig
from rgtp.families.detection.detector import Detector
from rgtp.families.detection.tools.fcos_targets import assign
from rgtp.families.detection.tools.losses import fcos_loss
from rgtp.models.checkpoint_files import save_weights
from rgtp.train.config import TrainConfig
from rgtp.train.schedule import lr_at, param_groups

Batch = tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]


class SynthVIDBatches(IterableDataset):
    """Endless batches (images (B, 3, S, S) float, boxes list, labels list) of SynthVID
    training frames; worker w draws from its own seeded stream."""

    def __init__(self, seed: int, batch_size: int, size: int) -> None:
        self.seed, self.batch_size, self.size = seed, batch_size, size

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        samples = training_samples(self.seed * 1009 + worker, SynthVIDConfig(size=self.size))
        while True:
            batch = [next(samples) for _ in range(self.batch_size)]
            images = torch.from_numpy(np.stack([b[0] for b in batch])).permute(0, 3, 1, 2)
            yield (
                images.float(),
                [torch.from_numpy(b[1]).float() for b in batch],
                [torch.from_numpy(b[2]).long() for b in batch],
            )


def train(
    tc: TrainConfig, out: Path, detector_cfg: DetectorConfig | None = None, progress: bool = True
) -> dict:
    """Train and save weights (safetensors) at `out`, with a JSON log beside it."""
    torch.manual_seed(tc.seed)
    cfg = detector_cfg or get_config(tc.model)
    if cfg.head.num_classes != len(CLASSES):
        raise ValueError(
            f"{cfg.name} has {cfg.head.num_classes} classes, SynthVID has {len(CLASSES)}"
        )
    model = Detector(cfg).train()
    opt = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr, betas=(0.9, 0.999))
    loader = DataLoader(
        SynthVIDBatches(tc.seed, tc.batch_size, cfg.backbone.img_size),
        batch_size=None,
        num_workers=tc.workers,
        persistent_workers=tc.workers > 0,
    )
    log: list[dict] = []
    running: dict[str, float] = {}
    start = time.time()
    bar = tqdm(total=tc.steps, desc="train", disable=not progress, unit="step")
    for step, (images, boxes, labels) in zip(range(tc.steps), loader, strict=False):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tc)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=tc.bf16):
            head = model(images)
        targets = [
            assign(head.points, head.strides, b, lab) for b, lab in zip(boxes, labels, strict=True)
        ]
        losses = fcos_loss(head, targets)
        total = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        for k, v in losses.items():
            running[k] = running.get(k, 0.0) + v.item()
        bar.update(1)
        if (step + 1) % tc.log_every == 0 or step + 1 == tc.steps:
            n = tc.log_every if (step + 1) % tc.log_every == 0 else (step + 1) % tc.log_every
            rec = {"step": step + 1, "lr": lr_at(step, tc), "minutes": (time.time() - start) / 60}
            rec.update({k: v / n for k, v in running.items()})
            log.append(rec)
            running = {}
            bar.set_postfix(loss=f"{sum(rec[k] for k in losses):.3f}")
    bar.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"config": json.dumps(cfg.to_dict()), "train": json.dumps(asdict(tc))}
    save_weights(model.eval(), out, metadata=meta, dtype=getattr(torch, tc.save_dtype))
    summary = {
        "train": asdict(tc),
        "minutes": (time.time() - start) / 60,
        "log": log,
        "torch": torch.__version__,
    }
    out.with_suffix(".train.json").write_text(json.dumps(summary, indent=1))
    return summary
