"""Stages return attention rows only for the blocks the package's rollout uses: the plan and
the manifest say which, every backend's graphs agree, and a stream that would roll out
through other blocks is refused when it is opened."""

from __future__ import annotations

import copy
import dataclasses
import json

import onnx
import pytest
import torch

from rgtp.core.selection import FixedKeep
from rgtp.export.ensure import ensure_package
from rgtp.export.onnx_graphs import ExportError
from rgtp.export.package import export_package
from rgtp.models.config import PruningConfig
from rgtp.package.manifest import Manifest, manifest_problems
from rgtp.package.plan import StagePlan
from rgtp.runtime import Pipeline
from tests.conftest import moving_frames
from tests.test_pruned_loop import dense_reference


@pytest.fixture(scope="module")
def last_block_only(tiny_detector):
    """The tiny detector (global blocks 2 and 5) whose own rollout runs through block 5 only."""
    det = copy.deepcopy(tiny_detector)
    det.cfg = dataclasses.replace(det.cfg, pruning=PruningConfig(rollout_blocks=(5,)))
    return det


@pytest.fixture(scope="module")
def package(last_block_only, tmp_path_factory):
    n = last_block_only.cfg.backbone.num_tokens
    plan = StagePlan.create(last_block_only.cfg, [n // 4], "per-global")
    out = tmp_path_factory.mktemp("rows") / "pkg"
    # fixed-K graphs only: the rows are what is checked, not the layouts
    export_package(last_block_only, plan, out, symbolic=False, progress=False)
    return out


def test_the_plan_takes_its_rollout_blocks_from_the_model(last_block_only, tiny_detector) -> None:
    plan = StagePlan.create(last_block_only.cfg, [49])
    assert plan.rollout_blocks == (5,)
    assert [plan.row_blocks(i) for i in range(len(plan.stages))] == [(), (5,)]
    assert "attn_2" not in plan.stage_spec(0, 49).output_names
    assert plan.stage_spec(1, 49).output_names[-1] == "attn_5"
    assert StagePlan.create(tiny_detector.cfg, [49]).rollout_blocks == (2, 5)  # all: None
    assert StagePlan.create(last_block_only.cfg, [], rollout_blocks=(5, 2)).rollout_blocks == (
        2,
        5,
    )
    with pytest.raises(ValueError, match=r"rollout blocks \[1\]: choose one or more of the "):
        StagePlan.create(tiny_detector.cfg, [], rollout_blocks=(1,))


def test_the_manifest_and_the_graphs_return_rows_of_rollout_blocks_only(package) -> None:
    manifest = Manifest.load(package)
    assert manifest.plan.rollout_blocks == (5,)
    assert json.loads((package / "manifest.json").read_text())["plan"]["rollout_blocks"] == [5]
    for g in manifest.graphs:
        if g.kind != "stage":
            continue
        graph = onnx.load(str(package / g.file), load_external_data=False)
        rows = [o.name for o in graph.graph.output if o.name.startswith("attn_")]
        assert rows == (["attn_5"] if 5 in g.blocks else []), g.name
        assert [o.name for o in graph.graph.output] == [t.name for t in g.outputs]


def test_a_manifest_without_rollout_blocks_means_every_global_block(package) -> None:
    d = json.loads((package / "manifest.json").read_text())
    del d["plan"]["rollout_blocks"]
    assert manifest_problems(d) == []
    assert StagePlan.from_dict(d["plan"]).rollout_blocks == (2, 5)


@pytest.mark.parametrize("backend", ["ort", "torch"])
def test_a_stream_rolling_out_through_other_blocks_is_refused(package, backend) -> None:
    pipe = Pipeline.load(package, backend=backend)
    with pytest.raises(ValueError) as e:
        pipe.new_stream(pruning=PruningConfig(rollout_blocks=(2, 5)))
    assert str(e.value) == (
        "rollout through blocks [2, 5] needs the attention rows of blocks [2], which this "
        "package's stages do not return (they return rows for blocks [5], the model's rollout "
        "blocks at export); roll out through those, or export again with --rollout-blocks 2,5 "
        "(StagePlan.create(..., rollout_blocks=...))"
    )
    with pytest.raises(ValueError, match=r"needs the attention rows of blocks \[2\]"):
        pipe.new_stream(pruning=PruningConfig())  # None: every global block
    n = pipe.plan.num_tokens
    stream = pipe.new_stream(policy=FixedKeep(n // 4))
    assert stream.rollout_blocks == [5] and list(stream.state.attn_rows) == [5]
    for frame in moving_frames(3, 224):
        result = stream.step(frame)
    assert result.k == n // 4 and torch.isclose(result.importance.sum(), torch.tensor(1.0))


def test_ort_equals_torch_with_rows_of_one_block(package) -> None:
    """The same steps on both backends: equal kept tokens and importance."""
    n = Manifest.load(package).plan.num_tokens
    streams = [
        Pipeline.load(package, backend=b).new_stream(policy=FixedKeep(n // 4))
        for b in ("ort", "torch")
    ]
    for frame in moving_frames(4, 224):
        ort_result, torch_result = (s.step(frame) for s in streams)
        assert torch.equal(ort_result.keep, torch_result.keep)
        assert torch.allclose(ort_result.importance, torch_result.importance, atol=1e-5)


def test_keeping_all_tokens_equals_dense_without_rows_of_block_2(last_block_only) -> None:
    """Global block 2 returns no rows, and still attends as in the dense model."""
    n = last_block_only.cfg.backbone.num_tokens
    stream = Pipeline.from_model(last_block_only, buckets=[n]).new_stream(policy=FixedKeep(n))
    for frame in moving_frames(3, 224):
        stream.step(frame)
        fmap, _ = dense_reference(last_block_only, frame)
        assert (stream.out_map - fmap).abs().max().item() <= 1e-5


def test_a_package_without_the_rows_asked_for_is_not_reused(last_block_only, package) -> None:
    want = StagePlan.create(last_block_only.cfg, [49], rollout_blocks=(2, 5))
    with pytest.raises(ExportError, match=r"it returns no attention rows for rollout blocks \[2\]"):
        ensure_package(last_block_only, want, package, progress=False)
