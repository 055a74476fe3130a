"""The authors' exact settings: pruning after block 0's attention, its FLOPs, and the
paper preset."""

from __future__ import annotations

import pytest
import torch

from rgtp.families import get_config
from rgtp.families.detection.flops import schedule_macs
from rgtp.models.stages import PrunedStage, stage_modules
from rgtp.package.plan import StagePlan


def _tokens(detector, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    frame = torch.rand(1, 3, 224, 224, generator=g) * 255
    with torch.no_grad():
        _, x = detector.embed(frame)
    return x


def test_block0_prunes_after_its_attention(tiny_detector) -> None:
    """Block 0 attends over all N tokens; only its MLP and later blocks see the K kept: the
    kept rows of the dense block 0 output, exactly (the MLP is token-wise)."""
    x = _tokens(tiny_detector)  # (1, H, W, C)
    n = x.shape[1] * x.shape[2]
    keep = torch.randperm(n, generator=torch.Generator().manual_seed(1))[: n // 3].sort().values
    with torch.no_grad():
        dense = tiny_detector.backbone.blocks[0](x).flatten(1, 2)[0]
        stage = PrunedStage(tiny_detector.backbone, (0,), dense_block=0)
        (out,) = stage(x.flatten(1, 2), keep[None])
    assert (out[0] - dense[keep]).abs().max() <= 1e-5


def test_block0_mlp_stages_with_all_tokens_equal_the_dense_backbone(tiny_detector) -> None:
    cfg = tiny_detector.cfg
    plan = StagePlan.create(cfg, [], "per-global", prune_from="block0-mlp")
    assert plan.takes_all_tokens(0) and not plan.takes_all_tokens(1)
    assert plan.cached_blocks(0) == (1, 2)
    spec = plan.stage_spec(0, 50)
    assert spec.inputs[0].shape[1] == cfg.backbone.num_tokens
    assert spec.inputs[1].shape == ("B", 50)
    assert "k_cache_0" not in spec.input_names and "k_new_0" not in spec.output_names
    x = _tokens(tiny_detector, seed=2)
    n = cfg.backbone.num_tokens
    keep = torch.arange(n)
    with torch.no_grad():
        ref = x
        for block in tiny_detector.backbone.blocks:
            ref = block(ref)
        tokens = x.flatten(1, 2)
        zeros = torch.zeros(1, n, cfg.backbone.embed_dim)
        for i, module in enumerate(stage_modules(tiny_detector.backbone, plan)):
            caches = [zeros] * (2 * len(plan.cached_blocks(i)))
            tokens = module(tokens, keep[None], *caches)[0]
    assert (tokens - ref.flatten(1, 2)).abs().max() <= 1e-5


def test_a_global_block0_cannot_prune_after_its_attention(tiny_detector) -> None:
    import dataclasses

    cfg = tiny_detector.cfg
    glob = dataclasses.replace(
        cfg, backbone=dataclasses.replace(cfg.backbone, global_blocks=(0, 5))
    )
    with pytest.raises(ValueError, match="windowed block 0"):
        StagePlan.create(glob, [], prune_from="block0-mlp")
    with pytest.raises(ValueError, match="prune_from"):
        StagePlan.create(cfg, [], prune_from="block3")


# The authors' published GFLOPs, ViTDet-B, reset every 8 (docs/method.md)
PUBLISHED = [
    (672, 768, 93.4),
    (672, 512, 72.6),
    (672, 384, 62.1),
    (672, 196, 46.8),
    (672, 64, 36.0),
    (1024, 750, 152.4),
]


@pytest.mark.parametrize(("size", "k", "paper"), PUBLISHED)
def test_pruning_after_block0_reproduces_the_published_gflops(
    size: int, k: int, paper: float
) -> None:
    """Counting block 0's qkv and projection on all N tokens (the authors prune before its
    MLP) gives every published figure within 1 %; pruning at the input counts less."""
    cfg = get_config("vitdet-b", size).backbone
    after0 = schedule_macs(cfg, k, 8, prune_from="block0-mlp").backbone / 1e9
    at_input = schedule_macs(cfg, k, 8).backbone / 1e9
    assert abs(after0 - paper) / paper <= 0.01, after0
    assert at_input < after0


def test_the_paper_preset_streams_on_every_backend_alike(tiny_detector, tmp_path) -> None:
    """Pruning after block 0's attention with pooled rollout (the 672-px preset): K = N
    equals the dense model; pruned, the exported ORT graphs (fixed and symbolic K) keep the
    same tokens as the PyTorch reference, frame after frame."""
    from rgtp.core.selection import FixedKeep
    from rgtp.export.package import export_package
    from rgtp.models.config import PruningConfig
    from rgtp.runtime import Pipeline
    from tests.conftest import assert_same_detections, moving_frames
    from tests.test_pruned_loop import dense_reference

    cfg = tiny_detector.cfg
    n = cfg.backbone.num_tokens
    paper = PruningConfig.paper(672)
    assert paper.rollout_pool == 2 and PruningConfig.paper(1024).rollout_pool == 1
    frames = list(moving_frames(8, 224, seed=7))
    torch_pipe = Pipeline.from_model(tiny_detector, [n // 4], prune_from="block0-mlp")
    dense = torch_pipe.new_stream(policy=FixedKeep(n), pruning=paper)
    for frame in frames[:3]:
        dense.step(frame)
        fmap, _ = dense_reference(tiny_detector, frame)
        assert (dense.out_map - fmap).abs().max() <= 1e-5

    plan = StagePlan.create(cfg, [n // 4], prune_from="block0-mlp")
    export_package(tiny_detector, plan, tmp_path / "pkg", progress=False)
    reference = torch_pipe.new_stream(policy=FixedKeep(n // 4), pruning=paper)
    expected = [reference.step(f) for f in frames]
    assert sum(not r.reset for r in expected) >= 6
    for layout in ("per-k", "per-stage"):
        pipe = Pipeline.load(tmp_path / "pkg", backend="ort", layout=layout)
        stream = pipe.new_stream(policy=FixedKeep(n // 4), pruning=paper)
        for frame, want in zip(frames, expected, strict=True):
            got = stream.step(frame)
            assert torch.equal(got.keep, want.keep), layout
            assert_same_detections(got.detections, want.detections)


def test_pooled_rollout_buffers_are_pool4_times_smaller(tiny_detector) -> None:
    from rgtp.models.config import PruningConfig
    from rgtp.runtime import Pipeline

    pipe = Pipeline.from_model(tiny_detector, [])
    rows = {
        p: sum(
            t.numel() * t.element_size()
            for t in pipe.new_stream(pruning=PruningConfig(rollout_pool=p)).state.attn_rows.values()
        )
        for p in (1, 2)
    }
    assert rows[1] == 16 * rows[2]
    with pytest.raises(ValueError, match="does not divide"):
        Pipeline.from_model(tiny_detector, []).new_stream(pruning=PruningConfig(rollout_pool=3))
