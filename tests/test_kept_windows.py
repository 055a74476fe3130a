"""Windowed blocks of the pruned stages attend each kept query to its own window only: the
same result as whole windows, with the padding slots of the dense model (the tiny detector's
14 x 14 grid needs padding to 18 x 18 for its 6 x 6 windows), in PyTorch and in ONNX."""

from __future__ import annotations

import pytest
import torch

from rgtp.core.rollout import fuse_heads
from rgtp.core.selection import FixedKeep
from rgtp.families.detection.detector import Detector
from rgtp.models import stages
from rgtp.models.stages import PrunedStage
from rgtp.package.plan import StagePlan
from rgtp.runtime import Pipeline
from tests.conftest import (
    TINY_KS,
    assert_same_detections,
    moving_frames,
    randomize,
    tiny_config,
    tiny_plan,
)
from tests.test_pruned_loop import dense_reference

WINDOW_AREA = 36  # the tiny detector's 6 x 6 windows
# below and above the window area (conftest's `tiny_package` holds these K, one stage per global
# block); the queries are packed into tiles of their windows (`stages.tile_rows`)
KS = TINY_KS
PARTITIONS = ("per-global", "whole")


@pytest.mark.parametrize("partition", PARTITIONS)
@pytest.mark.parametrize("prune_from", ["input", "block0-mlp"])
def test_keeping_all_tokens_equals_the_dense_model(tiny_detector, partition, prune_from):
    assert tiny_detector.cfg.backbone.window_size**2 == WINDOW_AREA
    n = tiny_detector.cfg.backbone.num_tokens
    pipe = Pipeline.from_model(tiny_detector, [*KS, n], partition, prune_from=prune_from)
    stream = pipe.new_stream(policy=FixedKeep(n))
    for frame in moving_frames(2, 224):
        stream.step(frame)
        fmap, _ = dense_reference(tiny_detector, frame)
        assert (stream.out_map - fmap).abs().max().item() <= 1e-5


@pytest.mark.parametrize("partition", PARTITIONS)
@pytest.mark.parametrize("k", KS)
def test_kept_queries_of_a_still_frame_equal_the_dense_model(tiny_detector, partition, k):
    """With the caches of a dense step on the same frame, every kept query's window holds the
    dense keys/values, so the kept tokens' features are the dense ones."""
    n = tiny_detector.cfg.backbone.num_tokens
    stream = Pipeline.from_model(tiny_detector, [k, n], partition).new_stream(
        policy=FixedKeep(k), reset_every=0
    )
    frame = next(moving_frames(1, 224))
    fmap, _ = dense_reference(tiny_detector, frame)
    stream.step(frame)
    result = stream.step(frame)
    assert result.k == k and not result.reset
    assert (stream.out_map - fmap).abs().max().item() <= 1e-5


@pytest.mark.parametrize("k", [20, 49, 196])
def test_windows_without_padding_equal_the_dense_model(k: int) -> None:
    """A grid the windows tile exactly (14 x 14 tokens, 7 x 7 windows: no padding slots, as
    vitdet-b at 672 px): kept queries of a still frame get the dense features, below and
    above the window area and at K = N."""
    torch.manual_seed(0)
    detector = randomize(Detector(tiny_config(window=7))).eval()
    n = detector.cfg.backbone.num_tokens
    stream = Pipeline.from_model(detector, sorted({k, n})).new_stream(
        policy=FixedKeep(k), reset_every=0
    )
    frame = next(moving_frames(1, 224))
    fmap, _ = dense_reference(detector, frame)
    stream.step(frame)
    result = stream.step(frame)
    assert result.k == k
    assert (stream.out_map - fmap).abs().max().item() <= 1e-5


@pytest.fixture(scope="module", params=PARTITIONS)
def tiny_package(request, tiny_detector, exported_package):
    """The shared `tiny_package` for one stage per global block, and its K in one stage."""
    if request.param == "per-global":
        plan = tiny_plan(tiny_detector.cfg)
    else:
        plan = StagePlan.create(tiny_detector.cfg, list(KS), request.param)
    return exported_package(tiny_detector, plan), plan, request.param


@pytest.mark.parametrize("layout", ["per-k", "per-stage"])  # fixed-K and symbolic-K graphs
@pytest.mark.parametrize("k", KS)
def test_onnx_runtime_follows_the_torch_reference(tiny_detector, tiny_package, layout, k):
    path, plan, partition = tiny_package
    ort_stream = Pipeline.load(path, "ort", layout=layout).new_stream(policy=FixedKeep(k))
    ref_stream = Pipeline.from_model(tiny_detector, plan.buckets, partition).new_stream(
        policy=FixedKeep(k)
    )
    pruned = 0
    for frame in moving_frames(6, 224, speed=8.0):
        a, b = ort_stream.step(frame), ref_stream.step(frame)
        assert torch.equal(a.keep, b.keep), f"frame {a.index}: kept tokens differ"
        assert (ort_stream.out_map - ref_stream.out_map).abs().max() <= 1e-4
        assert_same_detections(a.detections, b.detections)
        pruned += not a.reset
    assert pruned == 5


@pytest.mark.parametrize("window", [6, 7])  # the grid padded to 18 x 18, and tiled exactly
@pytest.mark.parametrize("rows", [1, 5, 36])
@pytest.mark.parametrize("spread", ["one window", "everywhere"])
def test_tiles_of_any_size_equal_whole_windows(monkeypatch, window, rows, spread) -> None:
    """Queries packed into tiles of `rows` rows (`stages.tile_rows`), however they fall into
    windows (all in one window: that window takes several tiles, the others none), get the
    output of whole windows of all N queries; two streams with different keeps at once."""
    torch.manual_seed(0)
    detector = randomize(Detector(tiny_config(window=window))).eval()
    cfg = detector.cfg.backbone
    stage = PrunedStage(detector.backbone, [0])
    block = stage.blocks[0]
    n, c = cfg.num_tokens, cfg.embed_dim
    k = 30
    if spread == "one window":  # the first window's tokens, then the rest in raster order
        first = stage.gather_slots[: window * window]
        first = first[first < n][:k]
        rest = torch.tensor([i for i in range(n) if i not in set(first.tolist())])
        keeps = [first, rest[:k]]
    else:
        keeps = [torch.randperm(n)[:k] for _ in range(2)]
    keep = torch.stack([kp.sort().values for kp in keeps])  # (2, K)
    q, k_all, v_all = (torch.randn(2, n, c) for _ in range(3))
    fresh_k, fresh_v = torch.randn(2, k, c), torch.randn(2, k, c)
    at = keep.unsqueeze(-1).expand(-1, -1, c)  # (2, K, C)
    keys, values = k_all.scatter(1, at, fresh_k), v_all.scatter(1, at, fresh_v)
    everyone = torch.arange(n).expand(2, -1)
    with torch.no_grad():
        monkeypatch.setattr(stages, "tile_rows", lambda area, num_windows, k: area)
        whole = stage._windowed(block.attn, window, q, everyone, (keys, None), (values, None))
        monkeypatch.setattr(stages, "tile_rows", lambda area, num_windows, k: min(rows, area))
        tiled = stage._windowed(
            block.attn, window, q.gather(1, at), keep, (k_all, fresh_k), (v_all, fresh_v)
        )
    expected = whole.gather(1, at)
    assert (tiled - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("mode", ["rms", "mean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_heads_fused_one_by_one_equal_fuse_heads(mode, dtype) -> None:
    """The stage's head fusion (heads summed one by one, `stages.fuse_heads_by_head`) is the
    method's `rollout.fuse_heads`, in float32 and from bf16 probabilities (lifted first)."""
    torch.manual_seed(0)
    probs = torch.rand(2, 12, 7, 40).softmax(-1).to(dtype)
    expected = fuse_heads(probs, mode)
    fused = stages.fuse_heads_by_head(probs, mode)
    assert fused.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(fused, expected, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="unknown head fusion"):
        stages.fuse_heads_by_head(probs, "max")
