"""The pruned frame loop against the dense model."""

from __future__ import annotations

import pytest
import torch

from rgtp.core.selection import FixedKeep
from rgtp.models.boxes import postprocess
from rgtp.runtime import Pipeline
from rgtp.runtime.frames import to_model_input
from tests.conftest import moving_frames


def dense_reference(detector, frame):
    pixels, _ = to_model_input(frame, detector.cfg.backbone.img_size, torch.device("cpu"))
    with torch.no_grad():
        fmap = detector.features(pixels)
        boxes, scores = detector.head_from_map(fmap)
    return fmap[0].flatten(0, 1), postprocess(boxes[0], scores[0])


@pytest.mark.parametrize("radius", [0, 1, 2])
def test_keeping_all_tokens_equals_the_dense_model(tiny_detector, radius: int) -> None:
    n = tiny_detector.cfg.backbone.num_tokens
    pipe = Pipeline.from_detector(tiny_detector, buckets=[n // 4, n])
    stream = pipe.new_stream(policy=FixedKeep(n), radius=radius)
    worst = 0.0
    for frame in moving_frames(12, 224, seed=radius):
        result = stream.step(frame)
        fmap, dets = dense_reference(tiny_detector, frame)
        assert result.k == n
        worst = max(worst, (stream.out_map - fmap).abs().max().item())
        assert len(result.detections) == len(dets)
        assert torch.allclose(result.detections.boxes, dets.boxes, atol=1e-5, rtol=0)
        assert torch.allclose(result.detections.scores, dets.scores, atol=1e-5, rtol=0)
        assert torch.equal(result.detections.labels, dets.labels)
    assert worst <= 1e-5, worst


def test_pruned_frames_of_a_still_video_equal_the_dense_model(tiny_detector) -> None:
    """On a still video the caches hold exact keys/values, so every kept token's feature
    must equal the dense one and the maintained map must stay the dense map."""
    n = tiny_detector.cfg.backbone.num_tokens
    pipe = Pipeline.from_detector(tiny_detector, buckets=[n // 4, n // 2, n])
    stream = pipe.new_stream(policy=FixedKeep(n // 4), reset_every=0)
    frame = next(moving_frames(1, 224))
    fmap, _ = dense_reference(tiny_detector, frame)
    for t in range(4):
        result = stream.step(frame)
        assert result.reset == (t == 0)
        assert result.k == (n if t == 0 else n // 4)
        assert (stream.out_map - fmap).abs().max().item() <= 1e-5


def test_pruned_frames_update_only_kept_tokens(tiny_detector) -> None:
    n = tiny_detector.cfg.backbone.num_tokens
    pipe = Pipeline.from_detector(tiny_detector, buckets=[n // 4, n])
    stream = pipe.new_stream(policy=FixedKeep(n // 4), reset_every=8)
    frames = list(moving_frames(3, 224, speed=12.0))
    stream.step(frames[0])
    before = stream.out_map.clone()
    result = stream.step(frames[1])
    assert not result.reset and result.k == n // 4
    assert result.tracked is not None and result.keep.shape == (n // 4,)
    changed = (stream.out_map != before).any(dim=1)
    assert changed[result.keep].all()
    unchanged = torch.ones(n, dtype=torch.bool)
    unchanged[result.keep] = False
    assert not changed[unchanged].any(), "pruned tokens must keep their last feature"
    # importance guides the next frame: a distribution over the tokens
    assert torch.isclose(result.importance.sum(), torch.tensor(1.0))
    assert (result.importance >= 0).all()


def test_streams_share_a_pipeline_without_sharing_state(tiny_detector) -> None:
    n = tiny_detector.cfg.backbone.num_tokens
    pipe = Pipeline.from_detector(tiny_detector, buckets=[n // 4, n])
    a, b = pipe.new_stream(policy=FixedKeep(n // 4)), pipe.new_stream(policy=FixedKeep(n // 4))
    frames = list(moving_frames(4, 224))
    other = list(moving_frames(4, 224, seed=5))
    ra = [a.step(f) for f in frames]
    for f in other:
        b.step(f)
    solo = pipe.new_stream(policy=FixedKeep(n // 4))
    rs = [solo.step(f) for f in frames]
    for x, y in zip(ra, rs, strict=True):
        assert torch.equal(x.keep, y.keep)
        assert torch.equal(x.importance, y.importance)


def test_bad_frames_are_rejected_clearly(tiny_detector) -> None:
    pipe = Pipeline.from_detector(tiny_detector, buckets=[])
    with pytest.raises(ValueError, match="RGB frame"):
        pipe.new_stream().step(torch.zeros(224, 224))
    with pytest.raises(ValueError, match="no K bucket"):
        pipe.new_stream(policy=FixedKeep(10_000))


def test_model_pruning_settings_apply_and_are_validated(tiny_detector) -> None:
    import dataclasses

    from rgtp.models.config import PruningConfig

    n = tiny_detector.cfg.backbone.num_tokens
    pipe = Pipeline.from_detector(tiny_detector, buckets=[n // 4])
    assert pipe.new_stream().pruning == PruningConfig()  # the authors' settings by default
    custom = PruningConfig(
        rollout_blocks=(5,), similarity="cosine", novelty_share=0.25, track_union=True
    )
    stream = pipe.new_stream(policy=FixedKeep(n // 4), pruning=custom)
    assert stream.rollout_blocks == [5]
    previous = None
    for frame in moving_frames(3, 224):
        result = stream.step(frame)
        if previous is not None:  # the union never drops a token's own previous importance
            assert torch.all(result.tracked >= previous)
        previous = result.importance
    assert result.k == n // 4 and torch.isclose(result.importance.sum(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="not global blocks"):
        pipe.new_stream(pruning=PruningConfig(rollout_blocks=(0,)))
    with pytest.raises(ValueError, match="not global blocks"):
        dataclasses.replace(tiny_detector.cfg, pruning=PruningConfig(rollout_blocks=(1,)))
