"""The classifier family through the shared path: ViViT's spatial encoder pruned step by
step (CLS always kept), exported, run by ONNX Runtime, built by TensorRT-RTX."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rgtp.core.selection import FixedKeep, checkerboard, fill_from_most_similar
from rgtp.families.classification.vivit import ViViT
from rgtp.package.manifest import MANIFEST, ManifestError
from rgtp.package.plan import StagePlan
from rgtp.runtime import EngineOutputError, Pipeline, StreamOptions
from tests.conftest import TINY_VIVIT, moving_frames, randomize
from tests.stream_checks import assert_stream_intact

# 96 px: a 6 x 6 grid, N = 36 patch tokens and the CLS; 16 frames = 8 time steps.
CFG = TINY_VIVIT
N = CFG.spatial.num_tokens
BUCKETS = (14, 18, 24)  # 18: the checkerboard's
# the package: one stage per block, K = 14 (what ONNX Runtime runs here) and N
PLAN = StagePlan.create(CFG, BUCKETS[:1], "per-block")


def random_vivit() -> ViViT:
    torch.manual_seed(0)
    return randomize(ViViT(CFG))


@pytest.fixture(scope="module")
def vivit() -> ViViT:
    return random_vivit()


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return list(moving_frames(40, 96, seed=3, speed=4.0))  # 20 time steps


@pytest.fixture(scope="module")
def package(vivit, exported_package) -> Path:
    return exported_package(vivit, PLAN)


def dense_clip(model: ViViT, frames: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """The dense model on a clip: per-step CLS features (s, C) and class probabilities."""
    clip = torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2)[None].float()
    with torch.no_grad():
        features = model.clip_features(clip)
        return features[0], model.temporal_head(features)[0].softmax(-1)


def run(pipe: Pipeline, frames: list[np.ndarray], **options) -> list:
    stream = pipe.new_stream(**options)
    return [r for r in map(stream.step, frames) if r is not None]


@pytest.mark.parametrize("backend", ["torch", "ort"])
def test_keeping_every_token_equals_the_dense_model(vivit, frames, package, backend) -> None:
    pipe = Pipeline.from_model(vivit, BUCKETS) if backend == "torch" else Pipeline.load(package)
    clip = frames[: CFG.num_frames]
    results = run(pipe, clip, policy=FixedKeep(N))
    features, probs = dense_clip(vivit, clip)
    assert [r.k for r in results] == [N] * CFG.num_steps
    got = torch.stack([r.feature for r in results])
    assert (got - features).abs().max() <= 1e-5
    assert all(r.scores is None for r in results[:-1])  # a clip's scores come with its last step
    assert (results[-1].scores - probs).abs().max() <= 1e-5


def test_onnx_runtime_keeps_the_same_tokens_as_the_reference(vivit, frames, package) -> None:
    options = {"policy": FixedKeep(14), "reset_every": 8}
    ref = run(Pipeline.from_model(vivit, BUCKETS), frames, **options)
    for layout in ("per-stage", "per-k"):
        got = run(Pipeline.load(package, layout=layout), frames, **options)
        assert len(got) == len(ref) == 20
        assert sum(not r.reset for r in ref) >= 16
        for a, b in zip(got, ref, strict=True):
            assert torch.equal(a.keep, b.keep) and a.k == b.k
            assert (a.feature - b.feature).abs().max() <= 1e-4
            assert (a.scores is None) == (b.scores is None)
            if a.scores is not None:
                assert (a.scores - b.scores).abs().max() <= 1e-5
        # the CLS token is not one of the K: the stage graphs ran K + 1 rows
        assert {r.k for r in got if not r.reset} == {14}


def test_pruning_tracks_and_keeps_the_most_important_tokens(vivit, frames) -> None:
    results = run(Pipeline.from_model(vivit, BUCKETS), frames, policy=FixedKeep(14))
    pruned = [r for r in results if not r.reset]
    assert pruned and all(r.keep.numel() == 14 and r.tracked is not None for r in pruned)
    for r in pruned:
        order = r.tracked.argsort(descending=True)
        assert set(r.keep.tolist()) == set(order[:14].tolist()) or r.tracked.unique().numel() < N
        assert torch.isclose(r.importance.sum(), torch.tensor(1.0))


def test_checkerboard_reset_keeps_half_the_tokens_after_the_first_step(vivit, frames) -> None:
    pipe = Pipeline.from_model(vivit, BUCKETS)
    results = run(pipe, frames, policy=FixedKeep(14), reset_every=4, reset="checkerboard")
    resets = [r for r in results if r.reset]
    assert [r.index for r in resets] == [0, 4, 8, 12, 16]
    assert resets[0].k == N  # nothing cached yet: dense
    board = checkerboard(CFG.spatial.grid)
    assert all(torch.equal(r.keep, board) for r in resets[1:])
    with pytest.raises(ValueError, match="no K = 18 bucket"):
        Pipeline.from_model(vivit, (14,)).new_stream(reset="checkerboard")


def test_dropped_tokens_take_the_importance_of_their_most_similar_kept_token() -> None:
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])
    importance = torch.tensor([0.6, 0.2, 0.1, 0.1])
    out = fill_from_most_similar(importance, z, torch.tensor([0, 1]))
    assert torch.allclose(out, torch.tensor([0.6, 0.2, 0.6, 0.2]) / 1.6)
    assert checkerboard(3).tolist() == [0, 2, 4, 6, 8]


def test_a_failing_temporal_engine_leaves_the_stream_intact(vivit, frames) -> None:
    pipe = Pipeline.from_model(vivit, BUCKETS)

    def bad(stream) -> None:
        temporal = stream.engines.extra["temporal"]
        real = temporal.run
        temporal.run = lambda feeds: {"logits": real(feeds)["logits"] * float("nan")}
        try:  # frame 15 completes step 7, the first with scores; frame 14 is pending
            stream.step(frames[15])
        finally:
            temporal.run = real

    options = StreamOptions(policy=FixedKeep(14))
    assert_stream_intact(pipe, frames[:24], bad, EngineOutputError, "temporal", options, at=15)


def test_a_classifier_refuses_a_user_head(vivit, frames) -> None:
    stream = Pipeline.from_model(vivit, BUCKETS).new_stream()
    assert stream.step(frames[0]) is None  # half a time step
    with pytest.raises(ValueError, match="classifier takes no user head"):
        stream.step(frames[1], head=lambda fmap: None)
    assert stream.state.frame_index == 0 and len(stream.state.pending) == 1


def test_a_package_without_its_temporal_graph_is_refused(package, tmp_path) -> None:
    pkg = tmp_path / "pkg"
    shutil.copytree(package, pkg)
    text = (pkg / MANIFEST).read_text()
    import json

    d = json.loads(text)
    d["graphs"] = [g for g in d["graphs"] if g["name"] != "temporal"]
    (pkg / MANIFEST).write_text(json.dumps(d))
    with pytest.raises(ManifestError, match="'temporal' graph of a classification model"):
        Pipeline.load(pkg)


def test_every_classifier_graph_builds_with_tensorrt_rtx(package, tmp_path) -> None:
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX builder not installed")
    from rgtp.engines.trt_build import BuildOptions, build_trt

    pkg = tmp_path / "pkg"
    shutil.copytree(package, pkg)
    info = build_trt(pkg, BuildOptions(), progress=False)
    names = sorted(p["name"] for p in info["plans"])
    assert names == ["embed", "head", "stage0", "stage1", "stage2", "stage3", "temporal"]
    stage0 = next(p for p in info["plans"] if p["name"] == "stage0")
    assert sorted(stage0["profiles"], key=int) == ["14", str(N)]  # PLAN.buckets
