"""`rgtp check` on a classifier package: its symbolic stage (K + 1 rows, the CLS kept) and
its temporal graph are compared with the right PyTorch references and pass."""

from __future__ import annotations

from rgtp.export.check import check_package
from rgtp.export.ensure import ensure_package
from rgtp.package.manifest import Manifest
from tests.test_vivit_pruned import PLAN, random_vivit


def test_a_classifier_package_checks_clean(exported_package) -> None:
    """On test_vivit_pruned's package (96 px, 36 patch tokens and the CLS, a stage per
    block), exported once per run."""
    vivit = random_vivit()
    # what `rgtp run` does first: the package is found to hold what is asked, and kept
    pkg = ensure_package(vivit, PLAN, exported_package(vivit, PLAN), progress=False)
    symbolic = next(g for g in Manifest.load(pkg).graphs if g.symbolic)
    assert [t.shape for t in symbolic.inputs[:2]] == [("B", "K+1", 48), ("B", "K+1")]
    report = check_package(pkg, progress=False)
    assert report.problems == []
    assert {g.name for g in report.graphs} >= {"stage0_kK", "temporal", "head"}
    assert all(g.passed and g.max_abs < 1e-4 for g in report.graphs), report.graphs
