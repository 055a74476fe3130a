"""Seeded, reproducible training of a ViViT classifier on SynthMotion clips.

Rendering a clip costs about a quarter of what a training step spends on it, so the training
set is rendered once: `clips` clips of the seeded training stream (each scene under its
object's four motions), kept as uint8 in an .npy file under `cache_dir` and reused by later
runs with the same seed, count and clip shape. Batches draw from it with two augmentations
that turn a SynthMotion clip into another valid one of a known class: a horizontal flip
(left <-> right) and time reversal (left <-> right, approaching <-> receding).

The schedule and optimiser are the detector trainer's (`rgtp.train.trainer`: AdamW without
decay on norms, biases and position tables, linear warm-up then cosine, bf16 autocast).

While training only, an auxiliary linear head reads every time step's CLS feature and
predicts what the step shows of the target: its object and the sine and cosine of its
horizontal phase and of its size phase (SynthMotion's `target_phase`). It tells the spatial
encoder early what the temporal transformer needs from each step (which object, where, how
large); the motion itself is learnt from the class label alone. The head is not saved.

The spatial position table starts as 2-D sines and cosines (MAE's) rather than timm's
near-zero random one: trained from scratch, the near-zero table left the CLS feature without
any linear trace of where the target is after 1000 steps (probe R² ~0), and the motion at
chance. It stays a learnt parameter.

`python -m rgtp.train.vivit_trainer --steps N --out rgtp/weights/vivit-small.safetensors`
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from itertools import islice
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rgtp.data.synthmotion import CLASSES, MOTIONS, OBJECTS, SynthMotionConfig, training_clips
from rgtp.eval.classify import classify, clip_tensor, data_config, heldout_clips
from rgtp.models.checkpoint_files import read_state_dict
from rgtp.models.checkpoints import LoadReport, save_weights
from rgtp.models.registry import get_config, shipped_weights
from rgtp.models.vivit import ViViT
from rgtp.models.vivit_config import ViViTConfig, get_vivit_config
from rgtp.models.vivit_weights import load_timm_vit_into
from rgtp.train.config import TrainConfig
from rgtp.train.trainer import lr_at, param_groups

_CHUNK = 4 * len(MOTIONS)  # clips rendered per task: four scenes under their four motions
_FLIP = {"left": "right", "right": "left"}
_REVERSE = {**_FLIP, "approaching": "receding", "receding": "approaching"}
_PHASE_TARGETS = 4  # sin, cos of the horizontal phase; sin, cos of the size phase


@dataclass(frozen=True)
class ViViTTrainConfig(TrainConfig):
    """A classifier training run: the detector's settings (a fixed number of steps, so the
    same seed gives the same weights), the size of the rendered training set, and the weight
    of the auxiliary per-step loss. `workers` processes render the training set."""

    model: str = "vivit-small"
    steps: int = 800
    lr: float = 5e-4
    warmup: int = 100
    log_every: int = 25
    clips: int = 2400
    aux_weight: float = 1.0
    init_from: str = ""  # a detector whose shipped backbone starts the spatial encoder


# --------------------------------------------------------------------------- training set


@dataclass
class TrainingSet:
    """frames (n, T, S, S, 3) uint8 (memory-mapped), labels (n,) int64, phases (n, T, 2)
    float32: the target's horizontal and size phase in [0, 1) in every frame."""

    frames: np.ndarray
    labels: np.ndarray
    phases: np.ndarray


def _render_chunk(seed: int, chunk: int, count: int, cfg: SynthMotionConfig) -> list:
    """`count` clips of chunk `chunk`: the start of its own seeded training stream, so the
    set does not depend on how many processes render it."""
    clips = islice(training_clips(seed * 1_000_003 + chunk, cfg), count)
    return [(c.frames, c.label, c.target_phase) for c in clips]


def training_set(
    seed: int, n: int, cfg: SynthMotionConfig, cache_dir: Path, workers: int = 1
) -> TrainingSet:
    """The n-clip training set of `seed`, rendered into `cache_dir` once and memory-mapped.

    The file name holds the seed, n and a hash of the clip settings; the labels file is
    written last, so a render cut short is redone rather than read.
    """
    key = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()[:10]
    stem = cache_dir / f"synthmotion-train-s{seed}-n{n}-{key}"
    frames_path, meta_path = stem.with_suffix(".frames.npy"), stem.with_suffix(".meta.npz")
    if not meta_path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = stem.with_suffix(f".tmp{os.getpid()}.npy")
        shape = (n, cfg.num_frames, cfg.size, cfg.size, 3)
        frames = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        labels = np.empty(n, dtype=np.int64)
        phases = np.empty((n, cfg.num_frames, 2), dtype=np.float32)
        tasks = [(seed, j, min(_CHUNK, n - j * _CHUNK), cfg) for j in range(-(-n // _CHUNK))]
        if workers > 1:
            pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
            with pool:
                done = pool.map(_render_chunk, *zip(*tasks, strict=True))
                rendered = [c for chunk in done for c in chunk]
        else:
            rendered = [c for task in tasks for c in _render_chunk(*task)]
        for i, (f, label, phase) in enumerate(rendered):
            frames[i], labels[i], phases[i] = f, label, phase
        frames.flush()
        del frames
        os.replace(tmp, frames_path)
        np.savez(meta_path, labels=labels, phases=phases)
    meta = np.load(meta_path)
    return TrainingSet(np.load(frames_path, mmap_mode="r"), meta["labels"], meta["phases"])


def _relabel(swap: dict[str, str]) -> np.ndarray:
    """label -> the label of the same object doing the swapped motion, (L,) int64."""
    m = len(MOTIONS)
    motion = [MOTIONS.index(swap.get(MOTIONS[i % m], MOTIONS[i % m])) for i in range(len(CLASSES))]
    return np.array([i - i % m + j for i, j in enumerate(motion)], dtype=np.int64)


_FLIP_LABEL, _REVERSE_LABEL = _relabel(_FLIP), _relabel(_REVERSE)


def augmented_batch(
    data: TrainingSet, index: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clips `index` of the set, each flipped left-right and reversed in time with
    probability 1/2, with labels and phases to match: frames (B, T, S, S, 3) uint8,
    labels (B,), phases (B, T, 2)."""
    frames, labels, phases = data.frames[index], data.labels[index], data.phases[index]
    flip, reverse = rng.random((2, len(index))) < 0.5
    frames[flip] = frames[flip][:, :, :, ::-1]
    phases[flip, :, 0] = (1.0 - phases[flip, :, 0]) % 1.0
    labels[flip] = _FLIP_LABEL[labels[flip]]
    frames[reverse] = frames[reverse][:, ::-1]
    phases[reverse] = phases[reverse][:, ::-1]
    labels[reverse] = _REVERSE_LABEL[labels[reverse]]
    return frames, labels, phases


def batch_indices(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Endless batches of indices into an n-clip set: a fresh permutation per epoch (the
    last clips of an epoch that do not fill a batch wait for the next one)."""
    pending = np.empty(0, dtype=np.int64)
    while True:
        while len(pending) < batch_size:
            pending = np.concatenate([pending, rng.permutation(n)])
        yield np.sort(pending[:batch_size])
        pending = pending[batch_size:]


# --------------------------------------------------------------------------- losses


def aux_targets(labels: np.ndarray, phases: np.ndarray, tubelet: int) -> tuple[torch.Tensor, ...]:
    """Per time step: the object (B, s) int64 and the phases' sines and cosines (B, s, 4),
    read at each step's first frame."""
    angle = torch.from_numpy(phases[:, ::tubelet] * (2 * math.pi))
    trig = torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(2)
    obj = torch.from_numpy(labels // len(MOTIONS))[:, None].expand(-1, angle.shape[1])
    return obj, trig


def aux_loss(pred: torch.Tensor, obj: torch.Tensor, trig: torch.Tensor) -> torch.Tensor:
    """pred (B, s, objects + 4): cross-entropy on the object plus the squared error of the
    phases' sines and cosines (summed over the four), both averaged over clips and steps."""
    pred = pred.float()
    n = len(OBJECTS)
    phase_error = (pred[..., n:] - trig).square().sum(-1).mean()
    return F.cross_entropy(pred[..., :n].flatten(0, 1), obj.flatten()) + phase_error


def sincos_position_table(grid: int, dim: int) -> torch.Tensor:
    """(grid², dim) 2-D sine-cosine position codes in raster order (MAE's): dim / 4
    frequencies, geometric from 1 to 1e-4 radians per token, for the sine and the cosine
    of the row and of the column."""
    if dim % 4:
        raise ValueError(f"sine-cosine position codes need a width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1e-4 ** (torch.arange(quarter) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    angles = [pos.flatten()[:, None].float() * omega for pos in (rows, cols)]
    return torch.cat([f(a) for a in angles for f in (torch.sin, torch.cos)], dim=1)


# --------------------------------------------------------------------------- initialisation


def init_spatial_from_detector(model: ViViT, detector: str) -> LoadReport:
    """Start the spatial encoder from the shipped weights of the named rgtp detector: its
    first `depth` backbone blocks, patch kernel (inflated, "average") and position table
    (resampled to the model's grid), loaded as a timm ViT would be
    (`rgtp.models.vivit_weights.load_timm_vit_into`).

    The detector has no CLS token and no final norm (those keep their initial values) and
    relative-position tables (dropped: every spatial block here is global without them). Its
    pixel normalisation (detector config) is folded into the patch kernel and bias, so the
    embedding of a frame is the detector's.
    """
    det, path = get_config(detector), shipped_weights(detector)
    if path is None:
        raise ValueError(f"rgtp ships no weights for {detector!r} to start the encoder from")
    sd = {k.removeprefix("backbone."): t.float() for k, t in read_state_dict(path).items()}
    encoder = model.spatial
    own = encoder.state_dict()
    timm = {
        k: t
        for k, t in sd.items()
        if k.startswith(("patch_embed.", "pos_embed"))
        or (
            k.startswith("blocks.")
            and int(k.split(".")[1]) < encoder.cfg.depth
            and "rel_pos" not in k
        )
    }
    # detector: (p - m_d) / s_d; here (p - m) / s. So x_d = x * s / s_d + (m - m_d) / s_d.
    scale = torch.tensor(model.cfg.pixel_std) / torch.tensor(det.pixel_std)
    shift = (torch.tensor(model.cfg.pixel_mean) - torch.tensor(det.pixel_mean)) / torch.tensor(
        det.pixel_std
    )
    w = timm["patch_embed.proj.weight"]
    timm["patch_embed.proj.bias"] = timm["patch_embed.proj.bias"] + (
        w * shift[None, :, None, None]
    ).sum((1, 2, 3))
    timm["patch_embed.proj.weight"] = w * scale[None, :, None, None]
    pos = timm["pos_embed"]  # (1, G, G, C)
    timm["pos_embed"] = torch.cat([own["pos_embed"][:, :1], pos.flatten(1, 2)], dim=1)
    timm["cls_token"], timm["norm.weight"], timm["norm.bias"] = (
        own["cls_token"],
        own["norm.weight"],
        own["norm.bias"],
    )
    return load_timm_vit_into(model, timm, "average")


# --------------------------------------------------------------------------- loop


def train(
    tc: ViViTTrainConfig,
    out: Path,
    model_cfg: ViViTConfig | None = None,
    cache_dir: Path = Path("out/cache"),
    heldout: int = 0,
    progress: bool = True,
) -> dict:
    """Train and save the weights (safetensors) at `out`, with a JSON log beside it
    (`out` with suffix .train.json). `heldout` > 0 evaluates that many held-out clips at
    the end (`rgtp.eval.classify`) and records the figures in the log."""
    start = time.time()
    cfg = model_cfg or get_vivit_config(tc.model)
    data_cfg = data_config(cfg)
    data = training_set(tc.seed, tc.clips, data_cfg, cache_dir, tc.workers)
    render_minutes = (time.time() - start) / 60

    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    model = ViViT(cfg).train()
    with torch.no_grad():
        model.spatial.pos_embed[0, 1:] = sincos_position_table(
            cfg.spatial.grid, cfg.spatial.embed_dim
        )
    aux_head = nn.Linear(cfg.spatial.embed_dim, len(OBJECTS) + _PHASE_TARGETS)
    params = param_groups(model, tc.weight_decay) + param_groups(aux_head, tc.weight_decay)
    opt = torch.optim.AdamW(params, lr=tc.lr, betas=(0.9, 0.999))
    log: list[dict] = []
    running = {"loss": 0.0, "ce": 0.0, "aux": 0.0, "top1": 0.0}
    train_start, cpu_start = time.time(), time.process_time()
    batches = batch_indices(tc.clips, tc.batch_size, rng)
    for step, index in zip(range(tc.steps), batches, strict=False):
        frames, labels, phases = augmented_batch(data, index, rng)
        obj, trig = aux_targets(labels, phases, cfg.spatial.tubelet)
        target = torch.from_numpy(labels)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tc)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=tc.bf16):
            feats = model.clip_features(clip_tensor(frames))
            logits = model.temporal_head(feats)
            aux_pred = aux_head(feats)
        ce = F.cross_entropy(logits.float(), target)
        aux = aux_loss(aux_pred, obj, trig)
        total = ce + tc.aux_weight * aux
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_([*model.parameters(), *aux_head.parameters()], tc.grad_clip)
        opt.step()
        running["loss"] += total.item()
        running["ce"] += ce.item()
        running["aux"] += aux.item()
        running["top1"] += (logits.argmax(-1) == target).float().mean().item()
        if (step + 1) % tc.log_every == 0 or step + 1 == tc.steps:
            n = (step % tc.log_every) + 1
            rec = {
                "step": step + 1,
                "lr": lr_at(step, tc),
                "minutes": (time.time() - train_start) / 60,
                "cpu_minutes": (time.process_time() - cpu_start) / 60,
                **{k: v / n for k, v in running.items()},
            }
            log.append(rec)
            running = dict.fromkeys(running, 0.0)
            if progress:
                print(" ".join(f"{k} {v:.4g}" for k, v in rec.items()), flush=True)
    train_minutes = (time.time() - train_start) / 60
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"config": json.dumps(cfg.to_dict()), "train": json.dumps(asdict(tc))}
    save_weights(model.eval(), out, metadata=meta, dtype=getattr(torch, tc.save_dtype))
    summary: dict = {
        "train": asdict(tc),
        "minutes": (time.time() - start) / 60,
        "render_minutes": render_minutes,
        "train_minutes": train_minutes,
        "cpu_threads": torch.get_num_threads(),
        "log": log,
        "torch": torch.__version__,
    }
    if heldout:
        eval_start = time.time()
        result = classify(model, heldout_clips(heldout, data_cfg))
        summary["heldout"] = {**result.to_dict(), "minutes": (time.time() - eval_start) / 60}
        if progress:
            print(result.summary(), flush=True)
    out.with_suffix(".train.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> int:
    d = ViViTTrainConfig()
    p = argparse.ArgumentParser(description="Train a ViViT classifier on SynthMotion.")
    p.add_argument("--model", default=d.model)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--clips", type=int, default=d.clips, help="rendered training clips")
    p.add_argument("--aux-weight", type=float, default=d.aux_weight)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--init-from", default=d.init_from, help="detector whose backbone starts it")
    p.add_argument("--workers", type=int, default=d.workers, help="processes rendering clips")
    p.add_argument("--no-bf16", action="store_true", help="train in float32")
    p.add_argument("--cache-dir", default="out/cache", help="where rendered clips are kept")
    p.add_argument("--heldout", type=int, default=600, help="held-out clips evaluated at the end")
    p.add_argument("--out", default="rgtp/weights/vivit-small.safetensors")
    args = p.parse_args(argv)
    tc = ViViTTrainConfig(
        model=args.model,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        clips=args.clips,
        aux_weight=args.aux_weight,
        init_from=args.init_from,
        seed=args.seed,
        workers=args.workers,
        bf16=not args.no_bf16,
    )
    summary = train(tc, Path(args.out), cache_dir=Path(args.cache_dir), heldout=args.heldout)
    last = summary["log"][-1]
    print(
        f"trained {tc.steps} steps in {summary['minutes']:.1f} min "
        f"(rendering {summary['render_minutes']:.1f}); final loss {last['loss']:.3f} "
        f"(ce {last['ce']:.3f}); weights {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
