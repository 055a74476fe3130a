"""Seeded, reproducible training of a ViViT classifier on SynthMotion clips.

Rendering a clip costs about a quarter of what a training step spends on it, so the training
set is rendered once: `clips` clips of the seeded training stream (each scene under its
object's four motions), kept as uint8 in an .npy file under `cache_dir` and reused by later
runs with the same seed, count and clip shape. Batches draw from it with two augmentations
that turn a SynthMotion clip into another valid one of a known class: a horizontal flip
(left <-> right) and time reversal (left <-> right, approaching <-> receding).

The schedule and optimiser are the detector trainer's (`rgtp.train.schedule`: AdamW without
decay on norms, biases and position tables, linear warm-up then cosine, bf16 autocast).

Training runs in two phases. The joint phase trains the whole model (`steps` steps of
`batch_size` clips); what makes it find the target and tell the kind of motion within the
budget:
- both position tables start as sine-cosine codes (2-D MAE-style for the spatial one, 1-D
  over time steps for the temporal one) rather than timm's near-zero random ones, and stay
  learnt parameters. From the near-zero table the CLS feature held no linear trace of where
  the target is after 1000 steps (probe R² ~0).
- training-only linear heads (`TrainingHeads`, not saved) give the two transformers direct
  targets from SynthMotion's `target_phase` and `target_cover`: every patch token after the
  last spatial block predicts how much of it the target covers, every step's CLS feature
  predicts the target's object and where and how large it is, and every step token after
  the first temporal block predicts how far those phases moved since the previous step.

The joint phase alone (3400 steps, 39 minutes on 2 cores) ends at 48 % held-out top-1: the
object right in 99.8 % of clips and sideways told from depth motion, but the direction
within each pair (left or right, approaching or receding) at chance, with the velocity
loss never below what predicting zero gives. Its spatial encoder holds the direction all
the same: the temporal phase trains the temporal transformer alone on the frozen per-step
features of `temporal_clips` training clips (cheap: no spatial passes after the first), at
64 clips a step, and a trial of it took held-out top-1 from 49 % to 95 % in 1500 steps with
the single-step control at 25 %.

`OMP_WAIT_POLICY=PASSIVE rgtp train --model vivit-small --workers 2` trains the shipped
`rgtp/weights/vivit-small.safetensors` (the defaults are its recipe; `--workers` and the wait
policy change only the speed. On 2 shared cores, a step took 0.56 s alone with either
policy, but 3.5 s with OpenMP's default spinning and 1.4 s with passive waiting while one
other process kept a core busy).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from itertools import islice
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rgtp.data.synthmotion import (
    CLASSES,
    COVER_CELL,
    MOTIONS,
    OBJECTS,
    SynthMotionConfig,
    training_clips,
)
from rgtp.families.classification.config import ViViTConfig
from rgtp.families.classification.data import clip_tensor, data_config, heldout_clips
from rgtp.families.classification.tools.classify import classify
from rgtp.families.classification.vivit import ViViT
from rgtp.families.classification.weights import load_vivit_weights
from rgtp.models.checkpoint_files import save_weights
from rgtp.package.family import get_config
from rgtp.train.config import TrainConfig
from rgtp.train.schedule import lr_at, param_groups

logger = logging.getLogger(__name__)

_CHUNK = 4 * len(MOTIONS)  # clips rendered per task: four scenes under their four motions
_FLIP = {"left": "right", "right": "left"}
_REVERSE = {**_FLIP, "approaching": "receding", "receding": "approaching"}
_PHASE_TARGETS = 3  # sin, cos of the horizontal phase; the size phase
_CACHE_FORMAT = 2  # bump when what a cached training set holds changes
_VELOCITY_SCALE = 10.0  # a step moves a phase 0.04..0.08 turn: targets of order 0.5


@dataclass(frozen=True)
class ViViTTrainConfig(TrainConfig):
    """A classifier training run: the detector's settings (a fixed number of steps, so the
    same seed gives the same weights), the size of the rendered training set, and the weight
    of the auxiliary per-step loss. `workers` processes render the training set."""

    model: str = "vivit-small"
    steps: int = 3400
    lr: float = 5e-4
    warmup: int = 200
    log_every: int = 25
    clips: int = 6000
    aux_weight: float = 1.0
    cover_weight: float = 1.0
    # every eval_every steps (0: never) the log records top-1 on the first eval_clips
    # held-out clips, rendered once
    eval_every: int = 500
    eval_clips: int = 48
    # the temporal phase (`_train_temporal`)
    temporal_steps: int = 1500
    temporal_clips: int = 3000
    temporal_batch: int = 64
    temporal_lr: float = 3e-4


# --------------------------------------------------------------------------- training set


@dataclass
class TrainingSet:
    """frames (n, T, S, S, 3) uint8 (memory-mapped), labels (n,) int64, phases (n, T, 2)
    float32: the target's horizontal and size phase in [0, 1) in every frame; cover
    (n, T, c, c) float16: the share of each COVER_CELL-pixel cell the target covers."""

    frames: np.ndarray
    labels: np.ndarray
    phases: np.ndarray
    cover: np.ndarray


def _render_chunk(seed: int, chunk: int, count: int, cfg: SynthMotionConfig) -> list:
    """`count` clips of chunk `chunk`: the start of its own seeded training stream, so the
    set does not depend on how many processes render it."""
    clips = islice(training_clips(seed * 1_000_003 + chunk, cfg), count)
    return [(c.frames, c.label, c.target_phase, c.target_cover) for c in clips]


def training_set(
    seed: int, n: int, cfg: SynthMotionConfig, cache_dir: Path, workers: int = 1
) -> TrainingSet:
    """The n-clip training set of `seed`, rendered into `cache_dir` once and memory-mapped.

    The file name holds the seed, n and a hash of the clip settings and the cache format;
    the labels file is written last, so a render cut short is redone rather than read.
    """
    settings = json.dumps({"format": _CACHE_FORMAT, **asdict(cfg)}, sort_keys=True)
    key = hashlib.sha256(settings.encode()).hexdigest()[:10]
    stem = cache_dir / f"synthmotion-train-s{seed}-n{n}-{key}"
    frames_path, meta_path = stem.with_suffix(".frames.npy"), stem.with_suffix(".meta.npz")
    if not meta_path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = stem.with_suffix(f".tmp{os.getpid()}.npy")
        shape = (n, cfg.num_frames, cfg.size, cfg.size, 3)
        frames = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        labels = np.empty(n, dtype=np.int64)
        phases = np.empty((n, cfg.num_frames, 2), dtype=np.float32)
        cells = cfg.size // COVER_CELL
        cover = np.empty((n, cfg.num_frames, cells, cells), dtype=np.float16)
        tasks = [(seed, j, min(_CHUNK, n - j * _CHUNK), cfg) for j in range(-(-n // _CHUNK))]
        if workers > 1:
            pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
            with pool:
                done = pool.map(_render_chunk, *zip(*tasks, strict=True))
                rendered = [c for chunk in done for c in chunk]
        else:
            rendered = [c for task in tasks for c in _render_chunk(*task)]
        for i, (f, label, phase, c) in enumerate(rendered):
            frames[i], labels[i], phases[i], cover[i] = f, label, phase, c
        frames.flush()
        del frames
        os.replace(tmp, frames_path)
        np.savez(meta_path, labels=labels, phases=phases, cover=cover)
    meta = np.load(meta_path)
    frames = np.load(frames_path, mmap_mode="r")
    return TrainingSet(frames, meta["labels"], meta["phases"], meta["cover"])


def _relabel(swap: dict[str, str]) -> np.ndarray:
    """label -> the label of the same object doing the swapped motion, (L,) int64."""
    m = len(MOTIONS)
    motion = [MOTIONS.index(swap.get(MOTIONS[i % m], MOTIONS[i % m])) for i in range(len(CLASSES))]
    return np.array([i - i % m + j for i, j in enumerate(motion)], dtype=np.int64)


_FLIP_LABEL, _REVERSE_LABEL = _relabel(_FLIP), _relabel(_REVERSE)


def augmented_batch(data: TrainingSet, index: np.ndarray, rng: np.random.Generator) -> TrainingSet:
    """Clips `index` of the set, each flipped left-right and reversed in time with
    probability 1/2, with labels, phases and cover to match (B clips, in memory)."""
    frames, labels = data.frames[index], data.labels[index]
    phases, cover = data.phases[index], data.cover[index]
    flip, reverse = rng.random((2, len(index))) < 0.5
    frames[flip] = frames[flip][:, :, :, ::-1]
    phases[flip, :, 0] = (1.0 - phases[flip, :, 0]) % 1.0
    cover[flip] = cover[flip][..., ::-1]
    labels[flip] = _FLIP_LABEL[labels[flip]]
    for a in (frames, phases, cover):
        a[reverse] = a[reverse][:, ::-1]
    labels[reverse] = _REVERSE_LABEL[labels[reverse]]
    return TrainingSet(frames, labels, phases, cover)


def batch_indices(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Endless batches of indices into an n-clip set: a fresh permutation per epoch (the
    last clips of an epoch that do not fill a batch wait for the next one)."""
    pending = np.empty(0, dtype=np.int64)
    while True:
        while len(pending) < batch_size:
            pending = np.concatenate([pending, rng.permutation(n)])
        yield np.sort(pending[:batch_size])
        pending = pending[batch_size:]


# --------------------------------------------------------------------------- training-only heads


class TrainingHeads(nn.Module):
    """Auxiliary linear heads, used while training and not saved.

    `cover` reads the patch tokens after the last spatial block (caught by a forward hook)
    and predicts how much of each patch the target covers: a dense "where is it" that the
    CLS token can then read positions from. `step` reads every time step's CLS feature
    (B, s, C) and predicts the target's object and the sine and cosine of its horizontal
    phase, and its size phase: what the temporal transformer needs from a step. `velocity`
    reads the step tokens after the first temporal block (another hook) and predicts how
    far each phase moved since the step before: the motion, which the temporal transformer
    then only has to pool.
    """

    def __init__(self, model: ViViT) -> None:
        super().__init__()
        sp = model.cfg.spatial
        if sp.patch_size % COVER_CELL:
            raise ValueError(
                f"patch size {sp.patch_size} is not a multiple of SynthMotion's "
                f"{COVER_CELL}-pixel cover cells"
            )
        self.tubelet, self.pool = sp.tubelet, sp.patch_size // COVER_CELL
        self.cover = nn.Linear(sp.embed_dim, 1)
        self.step = nn.Linear(sp.embed_dim, len(OBJECTS) + _PHASE_TARGETS)
        self.velocity = nn.Linear(sp.embed_dim, 2)
        self._tokens: dict[str, torch.Tensor] = {}
        self._hooks = [
            block.register_forward_hook(partial(self._keep_tokens, name))
            for name, block in (
                ("spatial", model.spatial.blocks[-1]),
                ("temporal", model.temporal.blocks[0]),
            )
        ]

    def _keep_tokens(self, name: str, module: nn.Module, args: tuple, output: tuple) -> None:
        self._tokens[name] = output[0]  # (batch, 1 + tokens, C), the CLS token first

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()

    def losses(self, feats: torch.Tensor, batch: TrainingSet) -> dict[str, torch.Tensor]:
        """After the model's forward on a batch: feats (B, s, C) -> scalar losses averaged
        over clips and steps: "cover", "frame", "velocity".

        Cover: binary cross-entropy of every patch against the target's share of it.
        Frame: cross-entropy on the object plus the squared error of the three position
        targets, summed. Velocity: squared error of the two phase changes (wrapped to
        [-1/2, 1/2) turn, times _VELOCITY_SCALE), summed, over steps 1..s-1.
        """
        assert self._tokens, "run the model's forward first"
        cover = torch.from_numpy(batch.cover[:, :: self.tubelet].astype(np.float32))
        cover = F.avg_pool2d(cover.flatten(0, 1), self.pool).flatten(1)  # (B s, N)
        cover_logits = self.cover(self._tokens["spatial"][:, 1:].float())[..., 0]
        at_steps = torch.from_numpy(batch.phases[:, :: self.tubelet])  # (B, s, 2)
        angle = at_steps[..., 0] * (2 * math.pi)
        # x lives on a torus (an object at the edge shows on both sides): its sine and cosine.
        # The size cycle jumps from largest to smallest: its phase itself, to [-1, 1).
        where = torch.stack([angle.sin(), angle.cos(), 2 * at_steps[..., 1] - 1], dim=-1)
        obj = torch.from_numpy(batch.labels // len(MOTIONS))[:, None].expand(-1, angle.shape[1])
        pred = self.step(feats.float())
        n = len(OBJECTS)
        frame = F.cross_entropy(pred[..., :n].flatten(0, 1), obj.flatten()) + (
            (pred[..., n:] - where).square().sum(-1).mean()
        )
        moved = ((at_steps[:, 1:] - at_steps[:, :-1] + 0.5) % 1.0 - 0.5) * _VELOCITY_SCALE
        velocity = self.velocity(self._tokens["temporal"][:, 2:].float())
        return {
            "cover": F.binary_cross_entropy_with_logits(cover_logits, cover),
            "frame": frame,
            "velocity": (velocity - moved).square().sum(-1).mean(),
        }


def sincos_codes(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Positions (n,) -> (n, dim) sine-cosine codes (the Transformer's): dim / 2
    frequencies, geometric from 1 to 1e-4 radians per position, sines then cosines."""
    half = dim // 2
    angle = positions.float()[:, None] * 1e-4 ** (torch.arange(half) / half)
    return torch.cat([angle.sin(), angle.cos()], dim=1)


@torch.no_grad()
def init_position_tables(model: ViViT) -> None:
    """Start both position tables as sine-cosine codes (the CLS rows keep theirs): the
    spatial one 2-D, half the width for the row and half for the column (MAE's), the
    temporal one 1-D over the time steps."""
    sp = model.cfg.spatial
    if sp.embed_dim % 4:
        raise ValueError(
            f"sine-cosine position codes need a width divisible by 4, got {sp.embed_dim}"
        )
    rows, cols = torch.meshgrid(torch.arange(sp.grid), torch.arange(sp.grid), indexing="ij")
    half = sp.embed_dim // 2
    table = torch.cat([sincos_codes(rows.flatten(), half), sincos_codes(cols.flatten(), half)], 1)
    model.spatial.pos_embed[0, 1:] = table
    model.temporal.pos_embed[0, 1:] = sincos_codes(torch.arange(model.cfg.num_steps), sp.embed_dim)


# --------------------------------------------------------------------------- loop


def _log_line(rec: dict) -> str:
    """A log record as one line: name value pairs, numbers to 4 significant digits."""
    return " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in rec.items())


def _train_joint(
    model: ViViT, data: TrainingSet, tc: ViViTTrainConfig, probe: list, progress: bool
) -> list[dict]:
    """The joint phase: the whole model with the training-only heads, `tc.steps` steps.
    Returns the log records."""
    rng = np.random.default_rng(tc.seed)
    heads = TrainingHeads(model)
    params = param_groups(model, tc.weight_decay) + param_groups(heads, tc.weight_decay)
    opt = torch.optim.AdamW(params, lr=tc.lr, betas=(0.9, 0.999))
    log: list[dict] = []
    running = dict.fromkeys(("loss", "ce", "cover", "frame", "velocity", "top1"), 0.0)
    train_start, cpu_start = time.time(), time.process_time()
    batches = batch_indices(tc.clips, tc.batch_size, rng)
    for step, index in zip(range(tc.steps), batches, strict=False):
        batch = augmented_batch(data, index, rng)
        target = torch.from_numpy(batch.labels)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tc)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=tc.bf16):
            feats = model.clip_features(clip_tensor(batch.frames))
            logits = model.temporal_head(feats)
        ce = F.cross_entropy(logits.float(), target)
        aux = heads.losses(feats, batch)
        total = (
            ce + tc.cover_weight * aux["cover"] + tc.aux_weight * (aux["frame"] + aux["velocity"])
        )
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_([*model.parameters(), *heads.parameters()], tc.grad_clip)
        opt.step()
        for key, value in {"loss": total, "ce": ce, **aux}.items():
            running[key] += value.item()
        running["top1"] += (logits.argmax(-1) == target).float().mean().item()
        if (step + 1) % tc.log_every == 0 or step + 1 == tc.steps:
            n = (step % tc.log_every) + 1
            rec = {
                "phase": "joint",
                "step": step + 1,
                "lr": lr_at(step, tc),
                "minutes": (time.time() - train_start) / 60,
                "cpu_minutes": (time.process_time() - cpu_start) / 60,
                **{k: v / n for k, v in running.items()},
            }
            if tc.eval_every and (step + 1) % tc.eval_every == 0:
                result = classify(model, probe)
                rec.update(heldout_top1=result.dense, heldout_single_step=result.single_step_best)
            log.append(rec)
            running = dict.fromkeys(running, 0.0)
            if progress:
                logger.info(_log_line(rec))
    heads.remove()
    return log


@torch.no_grad()
def _step_features(model: ViViT, frames: np.ndarray, batch_size: int = 16) -> torch.Tensor:
    """Clips (n, T, S, S, 3) uint8 -> per-step CLS features (n, s, C), model in eval mode."""
    model.eval()
    return torch.cat(
        [
            model.clip_features(clip_tensor(np.array(frames[i : i + batch_size])))
            for i in range(0, len(frames), batch_size)
        ]
    )


def _train_temporal(
    model: ViViT, data: TrainingSet, tc: ViViTTrainConfig, probe: list, progress: bool
) -> list[dict]:
    """The temporal phase: the temporal transformer alone on the frozen spatial encoder's
    features of the first `tc.temporal_clips` training clips (each played forwards or
    backwards, label to match), `tc.temporal_steps` steps of batch `tc.temporal_batch` at
    a constant `tc.temporal_lr`. Returns the log records."""
    start, cpu_start = time.time(), time.process_time()
    n = min(tc.temporal_clips, len(data.labels))
    feats = _step_features(model, data.frames[:n])
    labels = torch.from_numpy(data.labels[:n])
    reverse_label = torch.from_numpy(_REVERSE_LABEL)
    head = model.temporal.train()
    opt = torch.optim.AdamW(head.parameters(), lr=tc.temporal_lr, weight_decay=tc.weight_decay)
    gen = torch.Generator().manual_seed(tc.seed)
    log: list[dict] = []
    running = dict.fromkeys(("ce", "top1"), 0.0)
    for step in range(tc.temporal_steps):
        index = torch.randint(0, n, (tc.temporal_batch,), generator=gen)
        x, y = feats[index], labels[index]
        backwards = torch.rand(tc.temporal_batch, generator=gen) < 0.5
        x = torch.where(backwards[:, None, None], x.flip(1), x)
        y = torch.where(backwards, reverse_label[y], y)
        logits = head(x)
        ce = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        ce.backward()
        opt.step()
        running["ce"] += ce.item()
        running["top1"] += (logits.argmax(-1) == y).float().mean().item()
        if (step + 1) % tc.log_every == 0 or step + 1 == tc.temporal_steps:
            k = (step % tc.log_every) + 1
            rec = {
                "phase": "temporal",
                "step": step + 1,
                "minutes": (time.time() - start) / 60,
                "cpu_minutes": (time.process_time() - cpu_start) / 60,
                **{key: v / k for key, v in running.items()},
            }
            if tc.eval_every and (step + 1) % tc.eval_every == 0:
                result = classify(model, probe)
                rec.update(heldout_top1=result.dense, heldout_single_step=result.single_step_best)
                head.train()
            log.append(rec)
            running = dict.fromkeys(running, 0.0)
            if progress:
                logger.info(_log_line(rec))
    return log


def train(
    tc: ViViTTrainConfig,
    out: Path,
    model_cfg: ViViTConfig | None = None,
    cache_dir: Path = Path("out/cache"),
    heldout: int = 0,
    progress: bool = True,
    init: Path | None = None,
) -> dict:
    """Train and save the weights (safetensors) at `out`, with a JSON log beside it
    (`out` with suffix .train.json): the joint phase, then the temporal phase. `init`: skip
    the joint phase and start the temporal one from these weights (a joint phase's saved
    weights). `heldout` > 0 evaluates that many held-out clips at the end
    (`rgtp.families.classification.tools.classify`) and records the figures in the log."""
    start = time.time()
    cfg = model_cfg or get_config(tc.model)
    data_cfg = data_config(cfg)
    data = training_set(tc.seed, tc.clips, data_cfg, cache_dir, tc.workers)
    render_minutes = (time.time() - start) / 60

    torch.manual_seed(tc.seed)
    model = ViViT(cfg).train()
    init_position_tables(model)
    probe = heldout_clips(tc.eval_clips, data_cfg) if tc.eval_every else []
    train_start = time.time()
    if init is None:
        log = _train_joint(model, data, tc, probe, progress)
    else:
        load_vivit_weights(model, init)
        log = []
    joint_minutes = (time.time() - train_start) / 60
    # The temporal phase reads the spatial encoder as it will be shipped: rounded to the
    # saved dtype, so that starting it from the saved joint-phase weights (`init`) gives the
    # same result as running both phases at once.
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.copy_(tensor.to(getattr(torch, tc.save_dtype)))
    if tc.temporal_steps:
        log += _train_temporal(model, data, tc, probe, progress)
    train_minutes = (time.time() - train_start) / 60
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"config": json.dumps(cfg.to_dict()), "train": json.dumps(asdict(tc))}
    save_weights(model.eval(), out, metadata=meta, dtype=getattr(torch, tc.save_dtype))
    summary: dict = {
        "train": asdict(tc),
        "minutes": (time.time() - start) / 60,
        "render_minutes": render_minutes,
        "train_minutes": train_minutes,
        "joint_minutes": joint_minutes,
        "init": str(init) if init else None,
        "cpu_threads": torch.get_num_threads(),
        "log": log,
        "torch": torch.__version__,
    }
    if heldout:
        eval_start = time.time()
        result = classify(model, heldout_clips(heldout, data_cfg))
        summary["heldout"] = {**result.to_dict(), "minutes": (time.time() - eval_start) / 60}
        if progress:
            logger.info(result.summary())
    out.with_suffix(".train.json").write_text(json.dumps(summary, indent=1))
    return summary
