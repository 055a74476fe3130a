"""The pictures for every family: a classifier's overlay (its top class over the clip on the
time step's last frame) and K timeline, and a detector's boxes, through `rgtp.viz.describe`."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from rgtp.core.selection import FixedKeep
from rgtp.families import StepResult
from rgtp.families.classification.family import ClassResult
from rgtp.families.classification.vivit import ViViT
from rgtp.families.detection.boxes import Detections
from rgtp.families.detection.family import FrameResult
from rgtp.runtime import Pipeline
from rgtp.viz import describe
from rgtp.viz.overlay import overlay
from rgtp.viz.record import OverlayWriter
from rgtp.viz.timeline import plot_timeline
from tests.conftest import TINY_VIVIT, moving_frames, randomize

# 96 px: a 6 x 6 grid of 16 px tokens, N = 36; 16 frames = 8 time steps of 2 frames.
CFG = dataclasses.replace(
    TINY_VIVIT, class_names=("left", "right", "approaching", "receding", "bouncing")
)
GRID, N, K = 6, 36, 14
CAPTION = slice(96 - 19, 96)  # the rows of the caption strip


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return list(moving_frames(19, 96, seed=3, speed=4.0))  # 9 time steps and one frame over


@pytest.fixture(scope="module")
def results(frames) -> list[ClassResult | None]:
    """`stream.step`'s answer to every frame: a ClassResult on each time step's last frame."""
    torch.manual_seed(0)
    pipe = Pipeline.from_model(randomize(ViViT(CFG)), (K, 18, 24))
    stream = pipe.new_stream(policy=FixedKeep(K), reset_every=4, reset="checkerboard")
    return [stream.step(f) for f in frames]


def kept_pixels(result: StepResult) -> np.ndarray:
    """(96, 96) bool: the pixels of kept tokens, off the text rows at the top and foot."""
    mask = np.zeros(N, dtype=bool)
    mask[result.keep.numpy()] = True
    mask = mask.reshape(GRID, GRID).repeat(16, 0).repeat(16, 1)
    mask[:32] = mask[CAPTION] = False
    return mask


def test_a_classifier_run_gives_one_picture_per_time_step_on_its_last_frame(
    frames, results, tmp_path
) -> None:
    steps = [r for r in results if r is not None]
    assert [i for i, r in enumerate(results) if r is not None] == list(range(1, 19, 2))
    with OverlayWriter(tmp_path / "o.mp4", tmp_path / "frames", GRID, png_every=1) as writer:
        for frame, result in zip(frames, results, strict=True):
            writer.add(frame, result)
    paths = writer.files.pngs
    assert len(paths) == writer.files.pictures == len(steps) == 9
    pictures = [np.asarray(Image.open(p)) for p in paths]
    assert all(p.shape == (96, 192, 3) and p.dtype == np.uint8 for p in pictures)
    for t in (2, 5):  # a tracked step and the checkerboard reset step
        left, kept = pictures[t][:, :96], kept_pixels(steps[t])
        assert kept.any()
        assert (left[kept] == frames[2 * t + 1][kept]).all()  # kept tokens: the last frame
        assert (left[kept] != frames[2 * t][kept]).any()


def test_the_caption_is_the_top_class_over_the_clip_or_a_dash_before_it(frames, results) -> None:
    steps = [r for r in results if r is not None]
    last = steps[8]  # the clip of steps 1..8; step 7 ends the first full clip
    assert last.scores is not None and steps[7].scores is not None and steps[6].scores is None
    order = last.scores.argsort(descending=True)
    other = last.scores.clone()
    other[order[0]], other[order[1]] = last.scores[order[1]], last.scores[order[0]]
    second = dataclasses.replace(last, scores=other)
    before = dataclasses.replace(last, scores=None)
    assert describe(last).caption == f"{last.top[0]} {last.top[1]:.2f}"
    assert describe(second).caption.startswith(CFG.class_names[int(order[1])] + " ")
    assert describe(before).caption == "—"

    frame = frames[17]
    a, b, c = (overlay(frame, r, GRID)[:, :96] for r in (last, second, before))
    # only the caption strip tells them apart, and its glyphs differ, not just their colour
    assert (a[: CAPTION.start] == b[: CAPTION.start]).all()
    assert (a[: CAPTION.start] == c[: CAPTION.start]).all()
    strips = [x[CAPTION].max(-1) > 0 for x in (a, b, c)]
    assert (strips[0] != strips[1]).any() and (strips[0] != strips[2]).any()


def test_the_timeline_plots_time_steps_and_skips_the_frames_that_fill_them(
    results, tmp_path
) -> None:
    steps = [r for r in results if r is not None]
    assert [r.k for r in steps] == [N, K, K, K, N // 2, K, K, K, N // 2]  # resets: 0, 4, 8
    assert describe(steps[0]).unit == "time step"
    dense = [dataclasses.replace(r, k=N) for r in steps]
    png = plot_timeline({"dense": dense, f"pruned K={K}": results}, tmp_path / "t.png")
    assert png.stat().st_size > 10_000 and Image.open(png).size == (990, 605)
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_timeline({"pruned": results[:1]}, tmp_path / "empty.png")


def test_a_detector_frame_draws_its_boxes_above_the_threshold() -> None:
    dets = Detections(
        torch.tensor([[10.0, 10.0, 50.0, 50.0], [60.0, 60.0, 90.0, 90.0]]),
        torch.tensor([0.9, 0.1]),
        torch.tensor([1, 2]),
    )
    keep = torch.arange(N)
    result = FrameResult(0, True, N, keep, torch.ones(N), None, detections=dets)
    marks = describe(result, ("car", "person", "dog"), score_threshold=0.3)
    assert marks.unit == "frame" and marks.caption is None
    assert marks.boxes == [((10.0, 10.0, 50.0, 50.0), "person 0.90", 1)]
    picture = overlay(np.full((96, 96, 3), 128, np.uint8), result, GRID, ("car", "person", "dog"))
    assert tuple(picture[30, 10]) == (60, 180, 75)  # the palette's colour of label 1
    assert tuple(picture[75, 60]) == (128, 128, 128)  # the 0.1 box is not drawn


def test_a_result_of_an_unknown_family_is_refused_by_name() -> None:
    plain = StepResult(0, True, N, torch.arange(N), torch.ones(N), None)
    with pytest.raises(TypeError, match="cannot draw a StepResult; it draws a detector's"):
        overlay(np.zeros((96, 96, 3), np.uint8), plain, GRID)
