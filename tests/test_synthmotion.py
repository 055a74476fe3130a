"""SynthMotion: deterministic, balanced, and its classes cannot be read from one frame."""

from __future__ import annotations

from dataclasses import replace
from itertools import islice

import numpy as np
import pytest

from rgtp.data.synthmotion import (
    CLASSES,
    COVER_CELL,
    MOTIONS,
    SynthMotionConfig,
    _Scene,
    generate_clip,
    heldout_seeds,
    label_of,
    training_clips,
    training_seeds,
)

SHORT = SynthMotionConfig(size=64, num_frames=8)


def test_clips_are_deterministic_per_seed_and_shaped() -> None:
    a, b = generate_clip(5, SHORT), generate_clip(5, SHORT)
    assert a.frames.shape == (8, 64, 64, 3) and a.frames.dtype == np.uint8
    assert np.array_equal(a.frames, b.frames) and a.label == b.label == label_of(5)
    assert a.target_phase.shape == (8, 2)
    assert not np.array_equal(a.frames, generate_clip(5 + len(CLASSES), SHORT).frames)
    full = generate_clip(0)
    assert full.frames.shape == (16, 128, 128, 3)


def test_training_stream_shows_each_scene_under_the_four_motions() -> None:
    clips = list(islice(training_clips(1, SHORT), 4))
    again = list(islice(training_clips(1, SHORT), 4))
    assert len({c.seed for c in clips}) == 1 and len({c.object for c in clips}) == 1
    assert [c.motion for c in clips] == list(MOTIONS)
    for clip, same in zip(clips, again, strict=True):
        assert np.array_equal(clip.frames, same.frames)
        assert np.array_equal(clip.frames, generate_clip(clip.seed, SHORT, clip.label).frames)


def test_splits_are_disjoint_and_balanced() -> None:
    n = 3 * len(CLASSES)
    train, held = training_seeds(n), heldout_seeds(n)
    assert not set(train) & set(held)
    for seeds in (train, held):
        counts = np.bincount([label_of(s) for s in seeds], minlength=len(CLASSES))
        assert (counts == 3).all(), counts


def test_a_time_step_holds_one_instant() -> None:
    clip = generate_clip(3, SHORT)
    assert np.array_equal(clip.frames[0::2], clip.frames[1::2])
    assert not np.array_equal(clip.frames[0], clip.frames[2])
    moving = generate_clip(3, SynthMotionConfig(size=64, num_frames=8, hold=1))
    assert not np.array_equal(moving.frames[0], moving.frames[1])


def test_first_frame_is_the_same_for_every_motion_of_an_object() -> None:
    """One scene under the four motions of its object: frame 0 is the same image, so it
    carries nothing about the motion; later frames differ, and the target's phase moves the
    way the class says."""
    seed = 7
    base = label_of(seed) - label_of(seed) % len(MOTIONS)
    clips = [generate_clip(seed, SHORT, label=base + m) for m in range(len(MOTIONS))]
    for clip in clips[1:]:
        assert np.array_equal(clip.frames[0], clips[0].frames[0])
        assert not np.array_equal(clip.frames[-1], clips[0].frames[-1])
    # phase change from frame 1 to 2, on the circle (a phase may wrap from 1 to 0)
    step = {c.motion: (np.diff(c.target_phase, axis=0)[1] + 0.5) % 1 - 0.5 for c in clips}
    assert step["right"][0] > 0 > step["left"][0] and step["right"][1] == 0
    assert step["approaching"][1] > 0 > step["receding"][1] and step["receding"][0] == 0


@pytest.mark.parametrize(("a", "b", "axis"), [("left", "right", 0), ("approaching", "receding", 1)])
def test_last_frame_position_and_size_do_not_tell_the_motion(a: str, b: str, axis: int) -> None:
    """Without the wrap-around, objects moving left would end up on the left and receding
    ones small: over 16 frames' travel a threshold on the last frame's position (or size)
    would tell the motion most of the time. Here it barely beats chance."""
    target_only = SynthMotionConfig(size=32, min_distractors=0, max_distractors=0,
                                    min_clutter=0, max_clutter=0)  # fmt: skip
    n = 40
    last = np.array(
        [
            generate_clip(s, target_only, label=MOTIONS.index(m)).target_phase[-1, axis]
            for m in (a, b)
            for s in training_seeds(n)
        ]
    )
    is_a = np.arange(2 * n) < n
    best = max(max(((last < t) == is_a).mean(), ((last >= t) == is_a).mean()) for t in last)
    assert best <= 0.7, best


def test_target_cover_follows_the_target_and_its_occluders() -> None:
    """The cover map is where the target is: alone in the scene, its heaviest column is the
    target's horizontal phase (on the torus) and it grows while the target approaches; with
    distractors in front of it, parts of it are hidden."""
    alone = SynthMotionConfig(size=64, min_distractors=0, max_distractors=0,
                              min_clutter=0, max_clutter=0)  # fmt: skip
    clip = generate_clip(2, alone)  # cat approaching
    assert clip.motion == "approaching"
    cells = clip.target_cover.shape[-1]
    assert clip.target_cover.shape == (16, cells, cells) and cells == 64 // COVER_CELL
    columns = clip.target_cover.sum(axis=1)  # (T, cells)
    centre = (np.argmax(columns, axis=1) + 0.5) / cells
    gap = np.abs((centre - clip.target_phase[:, 0] + 0.5) % 1 - 0.5)
    assert (gap <= 1.5 / cells).all(), gap
    area = clip.target_cover.sum(axis=(1, 2))
    grows = np.diff(area[::2]) > 0
    assert grows.sum() >= len(grows) - 1  # one wrap from largest to smallest at most
    # one crowded scene, the target drawn last (in front) or first (behind the distractors)
    scene = _Scene(2, replace(alone, min_distractors=2, max_distractors=2), obj=0)
    scene.order = np.array([0, 1, 2])  # back to front; index 2 is the target
    front = scene.clip(2, 2).target_cover
    scene.order = np.array([2, 0, 1])
    behind = scene.clip(2, 2).target_cover
    assert (behind <= front + 1e-6).all() and behind.sum() < front.sum()
