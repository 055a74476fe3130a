"""FCOS target assignment and the trainer: seeded runs are reproducible."""

from __future__ import annotations

import dataclasses
import itertools

import torch

from rgtp.data.synthvid import CLASSES
from rgtp.families import get_config
from rgtp.families.detection.checkpoints import read_state_dict
from rgtp.families.detection.fcos_head import level_points
from rgtp.families.detection.tools.fcos_targets import assign, size_ranges
from rgtp.families.detection.tools.train import lr_at, train
from rgtp.train.config import TrainConfig
from tests.conftest import tiny_config


def test_registry_class_names_are_synthvid_classes() -> None:
    assert get_config("vitdet-small").head.class_names == CLASSES


def test_assignment_picks_inside_central_locations_of_the_right_level() -> None:
    strides = [8, 16, 32]
    points = torch.cat([level_points(256 // s, s) for s in strides])
    point_strides = torch.cat(
        [torch.full((len(level_points(256 // s, s)),), float(s)) for s in strides]
    )
    box = torch.tensor([[100.0, 100.0, 140.0, 140.0]])  # 40 px: max side distance ~20 -> P3
    t = assign(points, point_strides, box, torch.tensor([3]))
    pos = t.labels >= 0
    assert pos.any() and (t.labels[pos] == 3).all()
    p = points[pos]
    assert ((p > 100) & (p < 140)).all()
    # each positive regresses a side distance within its own level's range
    extent = torch.cat([p - box[:, :2], box[:, 2:] - p], dim=1).amax(dim=1)
    ranges = size_ranges(point_strides)[pos]
    assert ((extent > ranges[:, 0]) & (extent <= ranges[:, 1])).all()
    assert (point_strides[pos] == 8).sum() > (point_strides[pos] == 32).sum()
    # centre-ness peaks at the box centre and vanishes towards its sides
    assert 0 < t.centerness[pos].min() <= t.centerness[pos].max() <= 1
    # the stride-8 locations nearest the centre (116 and 124 on each axis): l/r = 16/24
    dist = ((points - 120) ** 2).sum(1).masked_fill(point_strides != 8, float("inf"))
    assert torch.isclose(t.centerness[torch.argmin(dist)], torch.tensor(2 / 3))
    empty = assign(points, point_strides, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert (empty.labels == -1).all()


def test_size_ranges_cover_all_extents() -> None:
    r = size_ranges(torch.tensor([8.0, 16.0, 32.0]))
    assert r[0, 0] == 0 and torch.isinf(r[2, 1])
    assert r[0, 1] == r[1, 0] and r[1, 1] == r[2, 0]  # contiguous: every extent has a level


def test_learning_rate_warms_up_then_decays() -> None:
    tc = TrainConfig(steps=100, warmup=10, lr=1.0)
    lrs = [lr_at(s, tc) for s in range(100)]
    assert lrs[0] < lrs[9] == 1.0
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))


def test_training_is_seeded_and_reproducible(tmp_path) -> None:
    cfg = tiny_config()
    cfg = dataclasses.replace(cfg, head=dataclasses.replace(cfg.head, num_classes=len(CLASSES)))
    tc = TrainConfig(steps=3, batch_size=2, warmup=1, workers=0, bf16=False, log_every=1)
    runs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.safetensors"
        summary = train(tc, out, detector_cfg=cfg, progress=False)
        assert all(torch.isfinite(torch.tensor(r["cls"])) for r in summary["log"])
        runs.append(read_state_dict(out))
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k]), k
    assert (tmp_path / "a.train.json").is_file()
