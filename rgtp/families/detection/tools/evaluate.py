"""Evaluating dense and pruned runs on SynthVID's held-out split.

Every setting (K, tracking radius r, frame sampling) runs every held-out sequence through a
fresh stream of one shared pipeline and gives one record: mAP50 (pycocotools), GFLOPs per
frame averaged over all frames including reset frames (the paper's convention, from the K
each frame's stages actually ran on), and wall-clock ms per frame. A setting keeps one K at
every stage, or follows a keep schedule (one K per stage, `ScheduleKeep`).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from functools import lru_cache

from tqdm import tqdm

from rgtp.core.selection import keep_policy, schedule_name
from rgtp.data.coco import sequences_to_coco
from rgtp.data.synthvid import CLASSES, Sequence, SynthVIDConfig, generate_sequence, heldout_seeds
from rgtp.families.detection.flops import frame_macs
from rgtp.families.detection.tools.coco_map import detections_to_coco, map50
from rgtp.models.config import PruningConfig
from rgtp.runtime.pipeline import Pipeline


@dataclass(frozen=True)
class EvalSetting:
    """k: tokens per pruned frame (None: dense, K = N on every frame), or a keep schedule
    (one K per stage); pruning: the method's settings (None: the model's own)."""

    k: int | tuple[int, ...] | None = None
    radius: int = 1
    sampling: int = 1
    reset_every: int = 8
    pruning: PruningConfig | None = None


@dataclass
class EvalRecord:
    k: int | str
    k_fraction: float
    r: int
    sampling: int
    reset_every: int
    map50: float
    gflops: float
    gflops_ratio: float
    ms_per_frame: float
    ms_engine: float
    ms_outside_engine: float
    mean_k: float
    pruning: dict
    frames: int
    sequences: int
    backend: str

    def to_dict(self) -> dict:
        """Plain JSON types, so a record equals itself read back from the JSON it writes."""
        return json.loads(json.dumps(asdict(self)))


def keep_name(k: int | tuple[int, ...] | None) -> str:
    """A setting's K as the command line spells it: "N" (dense), "77", "96/85/69/58"."""
    return "N" if k is None else str(k) if isinstance(k, int) else schedule_name(k)


@lru_cache(maxsize=4)
def heldout_split(sequences: int, frames: int, sampling: int, size: int) -> tuple[Sequence, ...]:
    """The held-out sequences (seeds disjoint from training), generated once per process."""
    cfg = SynthVIDConfig(size=size, num_frames=frames, sampling=sampling)
    return tuple(generate_sequence(seed, cfg) for seed in heldout_seeds(sequences))


def evaluate_setting(
    pipeline: Pipeline,
    setting: EvalSetting,
    sequences: tuple[Sequence, ...],
    progress: bool = True,
) -> EvalRecord:
    plan = pipeline.plan
    bb = plan.config.backbone
    n = plan.num_tokens
    gt = sequences_to_coco(sequences, CLASSES)
    results, ks, totals, engine = [], [], [], []
    image_id = 0
    name = keep_name(setting.k)
    label = f"K={name} r={setting.radius} 1/{setting.sampling}"
    total = sum(len(s.frames) for s in sequences)
    with tqdm(total=total, desc=label, unit="frame", disable=not progress) as bar:
        for s_index, seq in enumerate(sequences):
            stream = pipeline.new_stream(
                policy=keep_policy(setting.k or n),
                radius=setting.radius,
                reset_every=setting.reset_every,
                pruning=setting.pruning,
            )
            for t, frame in enumerate(seq.frames):
                r = stream.step(frame)
                image_id += 1
                results += detections_to_coco(image_id, r.detections)
                ks.append(r.stage_k)
                if s_index or t:  # the very first frame carries one-off warm-up costs
                    totals.append(r.timings["total"])
                    engine.append(r.timings["engine"])
                bar.update(1)
    dense_macs = frame_macs(bb).backbone
    macs = statistics.fmean(
        frame_macs(bb, k, setting.radius, prune_from=plan.prune_from, stages=plan.stages).backbone
        for k in ks
    )
    mean_k = statistics.fmean(statistics.fmean(k) for k in ks)  # over stages, then frames
    kept = n if setting.k is None else setting.k
    ms = statistics.fmean(totals)
    ms_engine = statistics.fmean(engine)
    return EvalRecord(
        k=setting.k if isinstance(setting.k, int) else name,
        k_fraction=(kept if isinstance(kept, int) else statistics.fmean(kept)) / n,
        r=setting.radius,
        sampling=setting.sampling,
        reset_every=setting.reset_every,
        map50=map50(gt, results),
        gflops=macs / 1e9,
        gflops_ratio=macs / dense_macs,
        ms_per_frame=ms,
        ms_engine=ms_engine,
        ms_outside_engine=ms - ms_engine,
        mean_k=mean_k,
        pruning={**asdict(stream.pruning), "prune_from": plan.prune_from},
        frames=len(ks),
        sequences=len(sequences),
        backend=pipeline.backend,
    )


def evaluate(
    pipeline: Pipeline,
    settings: list[EvalSetting],
    num_sequences: int = 30,
    num_frames: int = 64,
    progress: bool = True,
) -> list[EvalRecord]:
    size = pipeline.plan.config.backbone.img_size
    records = []
    for s in settings:
        seqs = heldout_split(num_sequences, num_frames, s.sampling, size)
        records.append(evaluate_setting(pipeline, s, seqs, progress))
    return records


def results_table(records: list[EvalRecord], title: str) -> str:
    """The paper's table (docs/method.md, "The authors' published figures"): one row per K, GFLOPs
    and mAP50, plus speed."""
    lines = [
        f"| {title} | GFLOPs | % of dense | mAP50 | ms/frame | ms outside engines |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(records, key=lambda r: (r.k != "N", -r.k_fraction)):
        name = "dense" if r.k == "N" else f"K={r.k} ({100 * r.k_fraction:.0f} %)"
        lines.append(
            f"| {name} | {r.gflops:.3f} | {100 * r.gflops_ratio:.1f} | {100 * r.map50:.2f} | "
            f"{r.ms_per_frame:.1f} | {r.ms_outside_engine:.1f} |"
        )
    return "\n".join(lines)


def radius_table(records: list[EvalRecord]) -> str:
    """The seed's Table 3: tracking window r against GFLOPs and mAP50 per sampling."""
    samplings = sorted({r.sampling for r in records})
    by = {(r.r, r.sampling): r for r in records}
    head = " | ".join(f"mAP50 1/{s} sampling" for s in samplings)
    lines = [f"| window | GFLOPs | {head} |", "|---|---|" + "---|" * len(samplings)]
    for radius in sorted({r.r for r in records}):
        row = [by.get((radius, s)) for s in samplings]
        gflops = next(x.gflops for x in row if x is not None)
        cells = " | ".join(f"{100 * x.map50:.2f}" if x else "-" for x in row)
        lines.append(f"| r = {radius} | {gflops:.4f} | {cells} |")
    return "\n".join(lines)
