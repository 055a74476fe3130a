"""The pruned frame loop against the dense model."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from rgtp.core.selection import FixedKeep
from rgtp.families.detection.boxes import detections_to_frame, postprocess
from rgtp.runtime import Pipeline, StreamOptions
from rgtp.runtime.frames import to_model_input
from tests.conftest import moving_frames
from tests.stream_checks import assert_same_result


def dense_reference(detector, frame):
    pixels, geometry = to_model_input(frame, detector.cfg.backbone.img_size, torch.device("cpu"))
    with torch.no_grad():
        fmap = detector.features(pixels)
        boxes, scores = detector.head_from_map(fmap)
    dets = postprocess(boxes[0], scores[0], score_threshold=0.02)  # the stream's default
    return fmap[0].flatten(0, 1), detections_to_frame(geometry, dets)


@pytest.mark.parametrize("radius", [0, 1, 2])
def test_keeping_all_tokens_equals_the_dense_model(tiny_detector, radius: int) -> None:
    n = tiny_detector.cfg.backbone.num_tokens
    pipe = Pipeline.from_model(tiny_detector, buckets=[n // 4, n])
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
    pipe = Pipeline.from_model(tiny_detector, buckets=[n // 4, n // 2, n])
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
    pipe = Pipeline.from_model(tiny_detector, buckets=[n // 4, n])
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


def test_interleaved_streams_equal_each_stream_alone(tiny_detector) -> None:
    """a.step, b.step, a.step, ... on one pipeline: each stream's keep, importance and
    detections are bit-identical to the same video run alone, pruned frames included."""
    n = tiny_detector.cfg.backbone.num_tokens
    pipe = Pipeline.from_model(tiny_detector, buckets=[n // 4, n])
    options = StreamOptions(policy=FixedKeep(n // 4), reset_every=4, task={"score_threshold": 0.28})
    videos = [list(moving_frames(6, 224, seed=s, speed=8.0)) for s in (0, 5)]
    streams = [pipe.new_stream(options) for _ in videos]
    got: list[list] = [[] for _ in videos]
    for t in range(6):
        for i, stream in enumerate(streams):
            got[i].append(stream.step(videos[i][t]))
    for results, video in zip(got, videos, strict=True):
        solo = pipe.new_stream(options)
        alone = [solo.step(f) for f in video]
        assert [r.reset for r in alone] == [True, False, False, False, True, False]
        for a, b in zip(results, alone, strict=True):
            assert_same_result(a, b)
    assert not torch.equal(got[0][1].keep, got[1][1].keep), "the two videos must differ"


def shifted_videos(count: int, frames: int, size: int) -> list[list[np.ndarray]]:
    """`count` different videos: 8 moving-camera videos, each also rolled sideways."""
    base = [list(moving_frames(frames, size, seed=s, speed=8.0)) for s in range(8)]
    return [[np.roll(f, 3 * (j // 8), axis=1) for f in base[j % 8]] for j in range(count)]


def run_threads(pipe, options, videos, threads: int) -> list[list]:
    """Each thread owns len(videos) // threads streams over the shared pipeline and steps
    them in turn, frame by frame; returns every stream's results."""
    per = len(videos) // threads
    results: list[list] = [[] for _ in videos]
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            own = range(t * per, (t + 1) * per)
            streams = {j: pipe.new_stream(options) for j in own}
            for f in range(len(videos[0])):
                for j in own:
                    results[j].append(streams[j].step(videos[j][f]))
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors
    return results


def assert_threads_equal_sequential(pipe, options, videos) -> None:
    threaded = run_threads(pipe, options, videos, threads=8)
    for results, video in zip(threaded, videos, strict=True):
        solo = pipe.new_stream(options)
        for a, f in zip(results, video, strict=True):
            assert_same_result(a, solo.step(f))
        assert not results[-1].reset


def test_eight_threads_of_eight_streams_equal_sequential_runs(tiny_detector) -> None:
    n = tiny_detector.cfg.backbone.num_tokens
    pipe = Pipeline.from_model(tiny_detector, buckets=[n // 4, n])
    options = StreamOptions(policy=FixedKeep(n // 4), task={"score_threshold": 0.28})
    assert_threads_equal_sequential(pipe, options, shifted_videos(64, 3, 224))


def test_eight_threads_of_eight_streams_equal_sequential_runs_on_ort(tiny_package) -> None:
    pipe = Pipeline.load(tiny_package, "ort")
    options = StreamOptions(policy=FixedKeep(40), task={"score_threshold": 0.28})
    assert_threads_equal_sequential(pipe, options, shifted_videos(64, 2, 224))


def test_bad_frames_are_rejected_clearly(tiny_detector) -> None:
    pipe = Pipeline.from_model(tiny_detector, buckets=[])
    with pytest.raises(ValueError, match="RGB frame"):
        pipe.new_stream().step(torch.zeros(224, 224))
    with pytest.raises(ValueError, match="no K bucket"):
        pipe.new_stream(policy=FixedKeep(10_000))


def test_model_pruning_settings_apply_and_are_validated(tiny_detector) -> None:
    import dataclasses

    from rgtp.models.config import PruningConfig

    n = tiny_detector.cfg.backbone.num_tokens
    pipe = Pipeline.from_model(tiny_detector, buckets=[n // 4])
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


def test_novelty_against_the_cache_refreshes_content_that_left(tiny_detector) -> None:
    """A square vanishes from a still scene: the cache of the tokens it covered still shows
    it, so novelty against the cache keeps them on the next step whatever their importance;
    every token's reference is its patch embedding from the last step that computed it."""
    from rgtp.models.config import PruningConfig

    n, grid = tiny_detector.cfg.backbone.num_tokens, tiny_detector.cfg.backbone.grid
    patch = 224 // grid
    pipe = Pipeline.from_model(tiny_detector, buckets=[n // 4])
    pruning = PruningConfig(novelty_share=0.5, novelty="cache")
    stream = pipe.new_stream(policy=FixedKeep(n // 4), pruning=pruning)
    scene = next(moving_frames(1, 224, speed=0.0))
    with_square = scene.copy()
    with_square[4 * patch : 6 * patch, 8 * patch : 10 * patch] = (20, 60, 220)
    square = [r * grid + c for r in (4, 5) for c in (8, 9)]

    last_patches = {}  # token -> its patch embedding when last computed
    for i, frame in enumerate([with_square, scene, scene, with_square]):
        result = stream.step(frame)
        z = stream.state.prev_patches
        for t in result.keep.tolist():
            last_patches[t] = z[t].clone()
        assert torch.equal(
            stream.state.ref_patches, torch.stack([last_patches[t] for t in range(n)])
        )
        if i in (1, 3):  # the square left, then came back: its cache is stale either way
            assert set(square) <= set(result.keep.tolist())
