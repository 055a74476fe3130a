"""The OpenVINO backend: what every backend passes (K = N ≡ dense, ≡ the PyTorch reference,
batched ≡ alone, the package checks), in f32 and, with stated tolerances, in bf16."""

from __future__ import annotations

import re
import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

pytest.importorskip("openvino")

from rgtp.core.selection import FixedKeep
from rgtp.engines import load_engines
from rgtp.engines.base import EngineError
from rgtp.export.onnx_graphs import example_inputs
from rgtp.package import verify as verify_module
from rgtp.package.manifest import Manifest, ManifestError
from rgtp.runtime import Pipeline, StreamOptions
from tests.conftest import assert_same_detections, moving_frames, synthvid_frames
from tests.test_many_streams import CountingEngines, assert_batched_equals_alone
from tests.test_package_trust import (
    FOREIGN_WEIGHTS,
    VICTIMS,
    _escape,
    flip_byte,
    point_weights_outside,
)
from tests.test_pruned_loop import assert_threads_equal_sequential, shifted_videos

# bf16 against the f32 PyTorch reference (docs/openvino.md, "Precision and tolerances"): a
# graph's outputs within 5 % of their largest magnitude (measured: 2.3 %, softmax rows; bf16
# rounds to 8 significant bits, 0.2 % a rounding, chained through 12 blocks), the K = N
# output map within 0.3 of the dense model's (measured 0.14 on values up to 30), and a pruned
# stream keeping at least 95 % of the reference's tokens each frame (measured 94 of 96).
BF16_RTOL = 0.05
BF16_MAP_ATOL = 0.3
BF16_KEPT_SHARE = 0.95


@pytest.fixture
def pkg(small_packages, tmp_path) -> Path:
    """A copy of vitdet-small package "b" (one stage, buckets 96 and 256, symbolic K)."""
    dst = tmp_path / "pkg"
    shutil.copytree(small_packages["b"][0], dst)
    return dst


def graph_engine(engines, name: str, k: int | None):
    """The engine of graph `name` (embed, head), or of stage `name` at K = k."""
    return engines.graph(name) if k is None else engines.stage(int(name), k)


def graph_feeds(engines, name: str, k: int | None) -> dict[str, torch.Tensor]:
    """Inputs for a graph: pixels for embed, else random tensors of two streams."""
    spec, plan = graph_engine(engines, name, k).spec, engines.plan
    if name == "embed":
        g = torch.Generator().manual_seed(0)
        return {spec.inputs[0].name: torch.rand(spec.inputs[0].concrete({}), generator=g) * 255}
    args = example_inputs(spec, k or plan.num_tokens, plan.num_tokens, plan.prefix, batch=2)
    return {t.name: a for t, a in zip(spec.inputs, args, strict=True)}


def graph_errors(package: Path, precision: str) -> dict[str, float]:
    """Per graph (embed, each stage at each K for two streams, head): the largest absolute
    difference from the PyTorch reference over the largest magnitude of the reference."""
    ov = load_engines(package, "openvino", precision=precision)
    ref = load_engines(package, "torch")
    calls = [("embed", None), ("head", None)]
    calls += [(str(i), k) for i, stage in enumerate(ref.stages) for k in stage]
    errors = {}
    for name, k in calls:
        feeds = graph_feeds(ref, name, k)
        want = graph_engine(ref, name, k).run(feeds)
        got = graph_engine(ov, name, k).run(feeds)
        assert got.keys() == want.keys()
        errors[f"stage{name}@{k}" if k else name] = max(
            ((got[n] - want[n]).abs().max() / want[n].abs().max().clamp_min(1e-6)).item()
            for n in want
        )
    return errors


# vitdet-small package "b" (one stage of 12 blocks, K = 96 and N) in these: every block of
# the shipped model in a few compiled shapes (each costs seconds and its own weights)


def test_every_graph_follows_the_torch_reference_in_f32(small_packages) -> None:
    assert max(graph_errors(small_packages["b"][0], "fp32").values()) <= 1e-5


def test_every_graph_follows_the_torch_reference_in_bf16(small_packages) -> None:
    errors = graph_errors(small_packages["b"][0], "bf16")
    assert max(errors.values()) <= BF16_RTOL, errors


def test_openvino_pipeline_follows_the_torch_reference(small_packages) -> None:
    path, det, plan = small_packages["b"]
    k = plan.buckets[0]
    stream = Pipeline.load(path, "openvino").new_stream(policy=FixedKeep(k))
    ref = Pipeline.from_model(det, plan.buckets, "per-global").new_stream(policy=FixedKeep(k))
    for frame in synthvid_frames(20):
        a, b = stream.step(frame), ref.step(frame)
        assert torch.equal(a.keep, b.keep), f"frame {a.index}: kept tokens differ"
        assert (stream.out_map - ref.out_map).abs().max() <= 1e-4
        assert_same_detections(a.detections, b.detections)


def test_a_bf16_stream_keeps_nearly_the_reference_tokens(small_packages) -> None:
    """bf16 moves importance a little: a few of K tokens may differ from the f32 choice."""
    path, det, plan = small_packages["b"]
    k = plan.buckets[0]
    stream = Pipeline.load(path, "openvino", precision="bf16").new_stream(policy=FixedKeep(k))
    ref = Pipeline.from_model(det, plan.buckets, "per-global").new_stream(policy=FixedKeep(k))
    for frame in synthvid_frames(20):
        a, b = stream.step(frame), ref.step(frame)
        shared = len(set(a.keep.tolist()) & set(b.keep.tolist()))
        assert shared >= BF16_KEPT_SHARE * len(b.keep), f"frame {a.index}: {shared} shared"


@pytest.mark.parametrize("precision, atol", [("fp32", 1e-4), ("bf16", BF16_MAP_ATOL)])
def test_openvino_keeping_all_tokens_equals_the_dense_model(
    small_packages, precision: str, atol: float
) -> None:
    path, det, plan = small_packages["b"]
    pipe = Pipeline.load(path, "openvino", precision=precision)
    stream = pipe.new_stream(policy=FixedKeep(plan.num_tokens))
    for frame in synthvid_frames(4):
        stream.step(frame)
        x = torch.as_tensor(frame).permute(2, 0, 1)[None].float()
        with torch.no_grad():
            dense = det.features(x)[0].flatten(0, 1)
        assert (stream.out_map - dense).abs().max() <= atol


# -- batched ≡ alone -------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_streams_batched_on_openvino_equal_the_streams_alone(tiny_package, precision) -> None:
    """Each batch size is its own compiled shape; a stream's tokens and results come out as
    alone, its rows bit for bit in float32; in bf16 (emulated on CPUs without it) the
    kernels OpenVINO picks per batch size round differently: within one bf16 rounding
    (2⁻⁸) of the map's magnitude (docs/openvino.md)."""
    videos = [list(moving_frames(7, 224, seed=s)) for s in range(8)]
    pipe = Pipeline.load(tiny_package, "openvino", precision=precision)
    calls = CountingEngines(pipe)
    assert_batched_equals_alone(pipe, videos, 8, rtol=0.0 if precision == "fp32" else 2**-8)
    assert max(calls.batches) == 4 and sum(b > 1 for b in calls.batches) > 0


def test_eight_threads_of_eight_streams_equal_sequential_runs(tiny_package) -> None:
    """Threads share the engines; each call takes its own infer request."""
    pipe = Pipeline.load(tiny_package, "openvino")
    options = StreamOptions(policy=FixedKeep(40), task={"score_threshold": 0.28})
    assert_threads_equal_sequential(pipe, options, shifted_videos(64, 2, 224))


# -- the package checks ------------------------------------------------------------------------


@pytest.mark.parametrize("victim", VICTIMS)
def test_a_flipped_byte_anywhere_stops_openvino(pkg, victim: str) -> None:
    flip_byte(pkg / victim)
    with pytest.raises(ManifestError, match=rf"{re.escape(victim)}: sha256 differs"):
        Pipeline.load(pkg, "openvino")


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink", "symlink loop"])
def test_names_outside_the_package_are_refused(pkg, how: str) -> None:
    message = _escape(pkg, how)
    with pytest.raises(ManifestError, match=re.escape(message)):
        Pipeline.load(pkg, "openvino")


def test_external_data_outside_the_package_is_refused(pkg) -> None:
    point_weights_outside(pkg)
    with pytest.raises(EngineError, match=re.escape(FOREIGN_WEIGHTS)):
        Pipeline.load(pkg, "openvino")


def test_each_file_is_hashed_once_per_load(pkg, monkeypatch) -> None:
    hashed: Counter[str] = Counter()
    real = verify_module.sha256_file

    def counting(path: Path) -> str:
        hashed[path.name] += 1
        return real(path)

    monkeypatch.setattr(verify_module, "sha256_file", counting)
    Pipeline.load(pkg, "openvino")
    assert hashed == Counter({Path(n).name: 1 for n in Manifest.load(pkg).files})


def test_verify_false_skips_hashes_but_not_sizes(pkg, caplog) -> None:
    flip_byte(pkg / "head.weights")
    with caplog.at_level("WARNING", logger="rgtp.package.verify"):
        Pipeline.load(pkg, "openvino", verify=False)
    assert "skipped (verify=False)" in caplog.records[-1].getMessage()
    (pkg / "stage0.weights").unlink()
    with pytest.raises(ManifestError, match=r"stage0\.weights: missing"):
        Pipeline.load(pkg, "openvino", verify=False)


def test_a_missing_bucket_graph_is_served_by_the_symbolic_graph(pkg) -> None:
    from tests.test_package_trust import _drop_graphs, edit_manifest

    edit_manifest(pkg, _drop_graphs("stage0_k96"))
    assert 96 in Pipeline.load(pkg, "openvino").engines.stages[0]
    edit_manifest(pkg, _drop_graphs("stage0_kK"))
    with pytest.raises(ManifestError, match="stage 0 has no graph for K bucket 96"):
        Pipeline.load(pkg, "openvino")


def test_fixed_k_graphs_serve_a_package_without_symbolic_ones(pkg) -> None:
    from tests.test_package_trust import _drop_graphs, edit_manifest

    frames = synthvid_frames(3)
    symbolic = Pipeline.load(pkg, "openvino").new_stream(policy=FixedKeep(96))
    edit_manifest(pkg, _drop_graphs("stage0_kK"))
    fixed = Pipeline.load(pkg, "openvino").new_stream(policy=FixedKeep(96))
    for frame in frames:
        a, b = fixed.step(frame), symbolic.step(frame)
        assert torch.equal(a.keep, b.keep)
        assert (fixed.out_map - symbolic.out_map).abs().max() <= 1e-5


def test_what_openvino_cannot_do_is_refused() -> None:
    with pytest.raises(EngineError, match="precision must be one of"):
        from rgtp.engines.openvino_backend import compile_config

        compile_config("int8", None)


def test_without_openvino_the_error_names_the_extra(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    monkeypatch.delitem(sys.modules, "rgtp.engines.openvino_backend", raising=False)
    with pytest.raises(ImportError, match=re.escape("pip install rgtp[openvino]")):
        load_engines(tmp_path, "openvino")


def test_after_openvino_engines_exports_trace_in_this_process(tiny_package) -> None:
    """OpenVINO's thread pool does not survive a fork: once it has compiled a model here,
    the exporter traces in this process instead of forking workers (which hung)."""
    from rgtp.export.parallel import export_workers, fork_unsafe

    Pipeline.load(tiny_package, "openvino")
    assert "OpenVINO" in (fork_unsafe() or "")
    assert export_workers(8, requested=4) == 1
