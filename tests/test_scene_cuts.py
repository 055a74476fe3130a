"""Scene cuts (`rgtp.core.scene_cut`, `StreamOptions.scene_cut`): the statistic on its own, the
option's checks, and a tiny model's stream resetting at a spliced cut and nowhere else, its
state after the cut the same as a stream's that started there."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_same_detections, moving_frames, randomize

from rgtp.core.scene_cut import is_scene_cut, patch_similarity
from rgtp.core.selection import FixedKeep
from rgtp.runtime import StreamOptions

# Random-init `tiny_detector` on `moving_frames` (2026-12-07): 0.76-0.83 between frames of one
# pan, 0.01-0.19 across a splice of two pans; a threshold between them, with margin both ways.
THRESHOLD = 0.5


def test_patch_similarity_is_the_mean_same_position_cosine() -> None:
    z = torch.randn(16, 8)
    assert float(patch_similarity(z, 3.0 * z)) == pytest.approx(1.0)
    assert float(patch_similarity(z, -z)) == pytest.approx(-1.0)
    other = z.clone()
    other[:4] = -other[:4]  # a quarter of the grid turned round: mean 3/4 - 1/4
    assert float(patch_similarity(z, other)) == pytest.approx(0.5)
    assert is_scene_cut(z, -z, 0.0) and not is_scene_cut(z, other, 0.25)


def test_patch_similarity_refuses_embeddings_of_another_shape() -> None:
    with pytest.raises(ValueError, match=r"\(16, 8\) and \(15, 8\)"):
        patch_similarity(torch.randn(16, 8), torch.randn(15, 8))


@pytest.mark.parametrize("bad", [1.0, -1.0, float("nan"), "0.5", True])
def test_a_threshold_outside_minus_one_to_one_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match=r"scene-cut threshold .* in \(-1, 1\)"):
        StreamOptions(scene_cut=bad)  # type: ignore[arg-type]


def resets(stream, frames: list[np.ndarray]) -> list[bool]:
    return [bool(stream.step(f).reset) for f in frames]


def test_a_stream_resets_at_a_spliced_cut_and_not_on_a_smooth_sequence(pipe) -> None:
    k = pipe.plan.num_tokens // 4
    pan, other = list(moving_frames(4, 224, speed=8.0)), list(moving_frames(4, 224, seed=1))
    options = {"policy": FixedKeep(k), "reset_every": 0, "scene_cut": THRESHOLD}
    assert resets(pipe.new_stream(**options), pan) == [True, False, False, False]
    assert resets(pipe.new_stream(**options), pan[:2] + other[2:]) == [True, False, True, False]
    off = {**options, "scene_cut": None}  # off: only the periodic schedule (step 0 here)
    assert resets(pipe.new_stream(**off), pan[:2] + other[2:]) == [True, False, False, False]


def test_after_a_cut_the_stream_is_the_one_that_started_there(pipe) -> None:
    """The cut's reset step is a dense step (its detections a dense stream's), and it rebuilds
    all per-stream state: the steps after it keep the same tokens and detect the same as a
    stream opened at the cut."""
    k = pipe.plan.num_tokens // 4
    pan, other = list(moving_frames(2, 224, speed=8.0)), list(moving_frames(4, 224, seed=1))
    options = {"policy": FixedKeep(k), "reset_every": 0, "scene_cut": THRESHOLD}
    cut = pipe.new_stream(**options)
    for f in pan:
        cut.step(f)
    fresh = pipe.new_stream(**options)
    dense = pipe.new_stream()
    for t, f in enumerate(other[2:]):
        a, b = cut.step(f), fresh.step(f)
        if t == 0:
            assert a.reset and a.k == pipe.plan.num_tokens
            assert_same_detections(a.detections, dense.step(f).detections)
        else:
            assert not a.reset and a.k == k
            assert torch.equal(a.keep, b.keep)
        assert_same_detections(a.detections, b.detections)
        torch.testing.assert_close(cut.out_map, fresh.out_map, rtol=1e-4, atol=1e-4)


def test_a_vivit_stream_resets_at_a_spliced_cut_between_tubelets() -> None:
    """The classifier's steps are tubelets (2 frames): its tubelet embeddings go through the
    same check. Random-init tiny ViViT on SynthMotion (2026-12-07): 0.71-0.80 within clip 2,
    0.24 from clip 2 to clip 3 (other held-out pairs are closer: SynthMotion clips share
    backgrounds, and a cut to much the same picture is no cut to this statistic)."""
    from rgtp.data.synthmotion import CLASSES
    from rgtp.families.classification.config import SpatialConfig, TemporalConfig, ViViTConfig
    from rgtp.families.classification.data import data_config, heldout_clips
    from rgtp.families.classification.vivit import ViViT
    from rgtp.runtime import Pipeline

    cfg = ViViTConfig(
        name="tiny-vivit",
        spatial=SpatialConfig(img_size=64, embed_dim=48, depth=3, num_heads=3),
        temporal=TemporalConfig(depth=1, num_heads=3),
        num_frames=8,
        num_classes=len(CLASSES),
    )
    torch.manual_seed(0)
    pipeline = Pipeline.from_model(randomize(ViViT(cfg)), (6,))
    clips = heldout_clips(4, data_config(cfg))
    a, b = list(clips[2].frames), list(clips[3].frames)

    def step_resets(frames: list[np.ndarray]) -> list[bool]:
        stream = pipeline.new_stream(policy=FixedKeep(6), reset_every=0, scene_cut=THRESHOLD)
        return [bool(r.reset) for r in map(stream.step, frames) if r is not None]

    assert step_resets(a) == [True, False, False, False]
    assert step_resets(a[:4] + b[4:]) == [True, False, True, False]


def test_the_cli_and_serving_settings_carry_the_threshold() -> None:
    """`rgtp run/triton --scene-cut` reach the streams: the run parser reads it, serving
    settings round-trip it through their JSON and check it when made, not at a sequence."""
    from rgtp.cli import build_parser
    from rgtp.serving.settings import ServingSettings

    run = ["run", "pkg", "--synthetic", "4", "--out", "o"]
    assert build_parser().parse_args([*run, "--scene-cut", "0.75"]).scene_cut == 0.75
    assert build_parser().parse_args(run).scene_cut is None
    settings = ServingSettings(scene_cut=0.75)
    assert ServingSettings.from_json(settings.to_json()).stream_options().scene_cut == 0.75
    with pytest.raises(ValueError, match=r"scene-cut threshold"):
        ServingSettings(scene_cut=1.5)
