"""Graphs traced by forked workers (`export.parallel`) make the same package, byte for
byte, as graphs traced one by one."""

from __future__ import annotations

import pytest

from rgtp.export.package import export_package
from rgtp.export.parallel import export_workers
from rgtp.package.plan import StagePlan


def test_parallel_tracing_writes_the_package_a_sequential_export_writes(
    tiny_detector, tmp_path
) -> None:
    plan = StagePlan.create(tiny_detector.cfg, [20], "whole")
    options = {"progress": False, "symbolic": False}  # 4 graphs: embed, K = 20 and N, head
    one = export_package(tiny_detector, plan, tmp_path / "one", workers=1, **options)
    two = export_package(tiny_detector, plan, tmp_path / "two", workers=2, **options)
    assert one.files == two.files  # every file's sha256 and size
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        [*two.files, "manifest.json"]
    )  # no scratch files left


def test_worker_counts() -> None:
    assert export_workers(1) == 1
    assert export_workers(50) >= 1 and export_workers(3, requested=2) == 2
    with pytest.raises(ValueError, match="at least 1, got 0"):
        export_workers(3, requested=0)
