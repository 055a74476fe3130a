"""What the backends share: the dtype table, input checks, the bind-and-allocate loop,
symbolic axes as the spec spells them, TensorRT build options, and "export if missing"."""

from __future__ import annotations

import re
import shutil

import onnxruntime as ort
import pytest
import torch

from rgtp.engines.base import EngineError, check_feeds
from rgtp.engines.binding import bind_io
from rgtp.engines.dtypes import dtype
from rgtp.export import package as package_module
from rgtp.export.ensure import ensure_package
from rgtp.export.onnx_graphs import ExportError, export_graph, graph_interface
from rgtp.families.detection.detector import Detector
from rgtp.package.plan import GraphSpec, StagePlan, TensorSpec
from tests.conftest import one_node_graph, randomize

# a stage-like interface with one prefix row: K kept rows plus 1
SPEC = GraphSpec(
    "stage0_kK",
    (
        TensorSpec("tokens", ("K+1", 4), "float32"),
        TensorSpec("keep", ("K+1",), "int64"),
        TensorSpec("k_cache_0", (10, 4), "float32"),
    ),
    (
        TensorSpec("tokens_out", ("K+1", 4), "float32"),
        TensorSpec("attn_0", ("K+1", 10), "float32"),
    ),
)


def feeds(rows: int, keep_rows: int | None = None) -> dict[str, torch.Tensor]:
    return {
        "tokens": torch.randn(rows, 4, dtype=torch.float64),
        "keep": torch.arange(rows if keep_rows is None else keep_rows),
        "k_cache_0": torch.randn(10, 4),
    }


def test_inputs_disagreeing_on_k_are_refused_with_the_sizes() -> None:
    with pytest.raises(
        EngineError,
        match=re.escape(
            "stage0_kK: input 'keep' has shape (7,), expected ('K+1',) = (6,) for K = 5"
        ),
    ):
        check_feeds(SPEC, feeds(6, keep_rows=7))
    bad_cache = {**feeds(6), "k_cache_0": torch.randn(9, 4)}
    with pytest.raises(
        EngineError, match=re.escape("'k_cache_0' has shape (9, 4), expected (10, 4)")
    ):
        check_feeds(SPEC, bad_cache)
    with pytest.raises(EngineError, match="missing input 'k_cache_0'"):
        check_feeds(SPEC, {"tokens": torch.zeros(6, 4), "keep": torch.arange(6)})
    assert check_feeds(SPEC, feeds(6)) == {"K": 5}


def test_bind_io_converts_inputs_allocates_outputs_and_binds_inputs_first() -> None:
    given = feeds(6)
    calls = []
    inputs, outputs = bind_io(
        SPEC, given, torch.device("cpu"), lambda t, x, output: calls.append((t.name, output))
    )
    assert calls == [
        ("tokens", False),
        ("keep", False),
        ("k_cache_0", False),
        ("tokens_out", True),
        ("attn_0", True),
    ]
    assert inputs["tokens"].dtype == torch.float32  # converted to the spec's dtype
    assert inputs["keep"].data_ptr() == given["keep"].data_ptr()  # already right: in place
    assert {n: tuple(y.shape) for n, y in outputs.items()} == {
        "tokens_out": (6, 4),
        "attn_0": (6, 10),
    }


def test_a_dtype_rgtp_does_not_bind_is_named() -> None:
    assert dtype("int64").torch == torch.int64 and dtype("float32").numpy.name == "float32"
    with pytest.raises(EngineError, match=r"dtype 'float16' cannot be bound; .*'float32'"):
        dtype("float16")


class _PrefixedStage(torch.nn.Module):
    """Called as the stages are: tokens, keep, then the caches."""

    def forward(self, tokens, keep, *caches):
        (k_cache,) = caches
        return tokens + k_cache[keep], tokens @ k_cache.T


def test_symbolic_axes_are_exported_as_the_spec_spells_them() -> None:
    args = (torch.randn(4, 4), torch.tensor([0, 2, 5, 9]), torch.randn(10, 4))
    model = export_graph(_PrefixedStage(), SPEC, args, symbolic_k=True)
    found = graph_interface(model, SPEC.name)
    assert found.inputs == SPEC.inputs and found.outputs == SPEC.outputs
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for rows in (2, 7):  # K = 1 and K = 6
        given = {
            n: x.to(dtype(t.dtype).torch).numpy()
            for (n, x), t in zip(feeds(rows).items(), SPEC.inputs, strict=True)
        }
        out = session.run(None, given)
        assert out[0].shape == (rows, 4) and out[1].shape == (rows, 10)


def test_build_options_speak_trtexecs_language() -> None:
    from rgtp.engines.trt_build import BuildOptions, PlanJob, Profile, trtexec_lines

    with pytest.raises(EngineError, match=r"unknown plan layout 'per-block'; choose from"):
        BuildOptions(layout="per-block")
    with pytest.raises(EngineError, match="in MiB and at least 1, got 0"):
        BuildOptions(mem_pool_size=0)
    with pytest.raises(EngineError, match="opt_batch must be at least 1, got 0"):
        BuildOptions(opt_batch=0)
    frame = {"frame": (1, 3, 32, 32)}
    job = PlanJob("embed", "embed.onnx", [Profile(frame, frame, frame)], None)
    (build, *_) = [
        line
        for line in trtexec_lines(job, "trt/embed.plan", BuildOptions(mem_pool_size=512))
        if line.startswith("trtexec --onnx")
    ]
    assert "--memPoolSize=workspace:512M" in build.split()


# -- export if missing, then load -------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tiny_detector, tmp_path_factory):
    """A package of fixed-K graphs traced by `one_node_graph`: what is checked here is the
    manifest and the weights, not the graphs."""
    plan = StagePlan.create(tiny_detector.cfg, [49], "whole")
    path = tmp_path_factory.mktemp("ensure") / "pkg"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(package_module, "export_graph", one_node_graph)
        return ensure_package(tiny_detector, plan, path, symbolic=False), plan


def test_a_missing_package_is_exported_as_asked(exported, tiny_detector, caplog) -> None:
    from rgtp.package.manifest import Manifest

    path, plan = exported
    manifest = Manifest.load(path)
    assert manifest.plan.stages == plan.stages and manifest.plan.buckets == plan.buckets
    assert not any(g.symbolic for g in manifest.graphs)
    with caplog.at_level("INFO", logger="rgtp"):
        assert ensure_package(tiny_detector, plan, path) == path  # reused, not exported again
    assert "reusing the package in" in caplog.text


def test_a_package_of_another_export_is_not_reused(exported, tiny_detector, tmp_path) -> None:
    path, plan = exported
    other = StagePlan.create(tiny_detector.cfg, [50], "per-global")
    with pytest.raises(ExportError) as caught:
        ensure_package(tiny_detector, other, path)
    assert "its partition is whole, not per-global" in str(caught.value)
    assert "it has no K buckets [50] (it has [49, 196])" in str(caught.value)
    retrained = randomize(Detector(tiny_detector.cfg), seed=1)
    with pytest.raises(ExportError, match=r"its weights \(model.safetensors\) are not the model's"):
        ensure_package(retrained, plan, path)
    copy = tmp_path / "pkg"
    shutil.copytree(path, copy)
    fewer = StagePlan.create(tiny_detector.cfg, [], "whole")  # a subset of the buckets: fine
    assert ensure_package(tiny_detector, fewer, copy, progress=False) == copy
