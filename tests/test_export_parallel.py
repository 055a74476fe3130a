"""Graphs traced by forked workers (`export.parallel`) make the same package, byte for
byte, as graphs traced one by one; a stage's graph at one K, derived from its symbolic-K
trace (`fix_k`), computes what the graph traced at that K computes.

Both tests use one package exported one graph at a time (`sequential`): the parallel export
is compared with it, and its symbolic-K stage is the trace the fixed-K graphs are derived
from. It has no head (`head="none"`): the head is one more graph like the others, and
tracing it twice more would only add seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from rgtp.export import parallel
from rgtp.export.onnx_graphs import SYMBOLIC_K, example_inputs, export_graph, fix_k, graph_interface
from rgtp.export.package import export_package
from rgtp.export.parallel import export_workers
from rgtp.families.detection.detector import Detector
from rgtp.models.stages import stage_modules
from rgtp.package.plan import StagePlan
from tests.conftest import randomize, tiny_config

KS = (20, 40)  # fewer rows than a 6 x 6 window has, and more


def two_block_detector() -> Detector:
    """A windowed block (6 x 6 windows: 36 rows) and a global one: the model's size is not
    what these tests compare."""
    torch.manual_seed(0)
    return randomize(Detector(tiny_config(depth=2, global_blocks=(1,))))


def plan_of(detector: Detector) -> StagePlan:
    return StagePlan.create(detector.cfg, list(KS), "whole", head="none")


@pytest.fixture(scope="module")
def sequential(tmp_path_factory) -> tuple[Path, object]:
    """(package directory, its manifest): embed and the one stage at K = 20, 40, N and
    symbolic K, from 2 traces, one at a time."""
    detector = two_block_detector()
    path = tmp_path_factory.mktemp("sequential") / "pkg"
    return path, export_package(detector, plan_of(detector), path, workers=1, progress=False)


def test_parallel_tracing_writes_the_package_a_sequential_export_writes(
    sequential, tmp_path
) -> None:
    detector = two_block_detector()
    two = export_package(detector, plan_of(detector), tmp_path / "two", workers=2, progress=False)
    assert sequential[1].files == two.files  # every file's sha256 and size
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        [*two.files, "manifest.json"]
    )  # no scratch files left


def test_worker_counts(monkeypatch) -> None:
    # where forking is safe (an earlier test of the run may have made it unsafe: OpenVINO)
    monkeypatch.setattr(parallel, "fork_unsafe", lambda: None)
    assert export_workers(1) == 1
    assert export_workers(50) >= 1 and export_workers(3, requested=2) == 2
    monkeypatch.setattr(parallel, "fork_unsafe", lambda: "OpenVINO engines were created")
    assert export_workers(3, requested=2) == 1
    with pytest.raises(ValueError, match="at least 1, got 0"):
        export_workers(3, requested=0)


def test_graphs_derived_from_the_symbolic_trace_compute_the_traced_ones(sequential) -> None:
    detector = two_block_detector()
    plan = plan_of(detector)
    (stage,) = stage_modules(plan.family.encoder(detector), plan)
    n = plan.num_tokens
    symbolic_spec = plan.stage_spec(0, SYMBOLIC_K)
    (record,) = [g for g in sequential[1].graphs if g.symbolic]
    assert record.spec == symbolic_spec
    symbolic = onnx.load(str(sequential[0] / record.file))  # its weights loaded too
    for k in KS:
        spec = plan.stage_spec(0, k)
        derived = fix_k(symbolic, spec)
        direct = export_graph(stage, spec, example_inputs(spec, k, n, batch=2))
        assert graph_interface(derived, spec.name) == graph_interface(direct, spec.name) == spec
        # what the K axis decided (the rows a window holds) is folded, as in the direct trace
        assert not {"Min", "If"} & {node.op_type for node in derived.graph.node}
        sessions = [ort.InferenceSession(g.SerializeToString()) for g in (derived, direct)]
        for batch in (1, 3):
            args = example_inputs(spec, k, n, batch=batch)
            feed = {t.name: a.numpy() for t, a in zip(spec.inputs, args, strict=True)}
            ours, traced = (s.run(None, feed) for s in sessions)
            for name, x, y in zip(spec.output_names, ours, traced, strict=True):
                np.testing.assert_allclose(x, y, rtol=0, atol=1e-6, err_msg=f"K={k} {name}")
