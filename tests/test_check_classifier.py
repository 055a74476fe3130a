"""`rgtp check` on a classifier package: its symbolic stage (K + 1 rows, the CLS kept) and
its temporal graph are compared with the right PyTorch references and pass."""

from __future__ import annotations

import torch

from rgtp.export.check import check_package
from rgtp.export.ensure import ensure_package
from rgtp.families.classification.config import SpatialConfig, TemporalConfig, ViViTConfig
from rgtp.families.classification.vivit import ViViT
from rgtp.package.manifest import Manifest
from rgtp.package.plan import StagePlan
from tests.conftest import randomize

# 64 px: a 4 x 4 grid, N = 16 patch tokens and the CLS
CFG = ViViTConfig(
    name="tiny-vivit",
    spatial=SpatialConfig(img_size=64, embed_dim=48, depth=2, num_heads=3),
    temporal=TemporalConfig(depth=1, num_heads=3),
    num_frames=8,
    num_classes=5,
)


def test_a_classifier_package_checks_clean(tmp_path) -> None:
    torch.manual_seed(0)
    plan = StagePlan.create(CFG, [6], "whole")
    pkg = ensure_package(randomize(ViViT(CFG)), plan, tmp_path / "pkg", progress=False)
    symbolic = next(g for g in Manifest.load(pkg).graphs if g.symbolic)
    assert [t.shape for t in symbolic.inputs[:2]] == [("B", "K+1", 48), ("B", "K+1")]
    report = check_package(pkg, progress=False)
    assert report.problems == []
    assert {g.name for g in report.graphs} >= {"stage0_kK", "temporal", "head"}
    assert all(g.passed and g.max_abs < 1e-4 for g in report.graphs), report.graphs
