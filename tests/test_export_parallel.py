"""Graphs traced by forked workers (`export.parallel`) make the same package, byte for
byte, as graphs traced one by one."""

from __future__ import annotations

import pytest
import torch

from rgtp.export.package import export_package
from rgtp.export.parallel import export_workers
from rgtp.families.detection.detector import Detector
from rgtp.package.plan import StagePlan
from tests.conftest import randomize, tiny_config


def test_parallel_tracing_writes_the_package_a_sequential_export_writes(tmp_path) -> None:
    # two blocks are enough for what is compared (the model's size is not): 4 graphs, embed,
    # K = 20 and N of the one stage, head
    torch.manual_seed(0)
    detector = randomize(Detector(tiny_config(depth=2, global_blocks=(1,))))
    plan = StagePlan.create(detector.cfg, [20], "whole")
    options = {"progress": False, "symbolic": False}
    one = export_package(detector, plan, tmp_path / "one", workers=1, **options)
    two = export_package(detector, plan, tmp_path / "two", workers=2, **options)
    assert one.files == two.files  # every file's sha256 and size
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        [*two.files, "manifest.json"]
    )  # no scratch files left


def test_worker_counts() -> None:
    assert export_workers(1) == 1
    assert export_workers(50) >= 1 and export_workers(3, requested=2) == 2
    with pytest.raises(ValueError, match="at least 1, got 0"):
        export_workers(3, requested=0)
