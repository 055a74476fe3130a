"""Every option is checked where it is given, with a message in the user's terms: keep
policies, stream options, pruning settings, post-processing, and the command line's numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rgtp.cli import main
from rgtp.core.selection import FixedKeep, MassKeep
from rgtp.core.tracking import match_tokens
from rgtp.families.detection.boxes import postprocess
from rgtp.models.config import PruningConfig

NAN = float("nan")


@pytest.mark.parametrize(
    ("k", "message"),
    [
        (0, r"K \(tokens kept per frame\) must be an integer >= 1, got 0"),
        (-5, r"must be an integer >= 1, got -5"),
        (2.5, r"must be an integer >= 1, got 2\.5"),
        (True, r"must be an integer >= 1, got True"),
        ("77", r"must be an integer >= 1, got '77'"),
    ],
)
def test_fixed_keep_refuses_what_is_not_a_token_count(k, message) -> None:
    with pytest.raises(ValueError, match=message):
        FixedKeep(k)


@pytest.mark.parametrize("p", [0.0, -0.5, 1.5, NAN, True])
def test_mass_keep_refuses_a_share_outside_zero_one(p) -> None:
    with pytest.raises(ValueError, match=r"importance mass must be a number in \(0, 1\]"):
        MassKeep(p)


def test_keep_policies_take_numpy_numbers() -> None:
    assert FixedKeep(np.int64(77)).k == 77 and MassKeep(np.float32(0.5)).p == 0.5


STREAM_OPTIONS = {
    "radius 1.5": ({"radius": 1.5}, r"tracking radius must be an integer >= 0, got 1\.5"),
    "radius -1": ({"radius": -1}, r"tracking radius must be an integer >= 0, got -1"),
    "radius 1000": (
        {"radius": 1000},
        r"tracking radius must be an integer in 0\.\.13 \(the token grid is 14 x 14\), got 1000",
    ),
    "radius 14": ({"radius": 14}, r"in 0\.\.13"),
    "reset_every 2.5": ({"reset_every": 2.5}, r"reset_every must be an integer >= 0, got 2\.5"),
    "reset_every -1": ({"reset_every": -1}, r"reset_every must be an integer >= 0, got -1"),
    "max_detections -1": ({"max_detections": -1}, r"max_detections must be an integer >= 1"),
    "max_detections 0": ({"max_detections": 0}, r"max_detections must be an integer >= 1"),
    "max_detections 2.5": ({"max_detections": 2.5}, r"max_detections must be an integer"),
    "nms_iou 5": ({"nms_iou": 5}, r"nms_iou must be a number in \(0, 1\], got 5"),
    "nms_iou 0": ({"nms_iou": 0.0}, r"nms_iou must be a number in \(0, 1\], got 0\.0"),
    "nms_iou NaN": ({"nms_iou": NAN}, r"nms_iou must be a number in \(0, 1\]"),
    "score_threshold -1": (
        {"score_threshold": -1},
        r"score_threshold must be a number in \[0, 1\], got -1",
    ),
    "score_threshold 1.5": ({"score_threshold": 1.5}, r"score_threshold must be a number"),
    "policy 77": ({"policy": 77}, r"policy must be a keep policy such as FixedKeep\(77\)"),
    "policy K above N": ({"policy": FixedKeep(10_000)}, r"no K bucket holds 10000 tokens"),
    "pruning a dict": ({"pruning": {"similarity": "dot"}}, r"pruning must be a PruningConfig"),
    "rollout block not global": (
        {"pruning": PruningConfig(rollout_blocks=(0,))},
        r"rollout blocks \[0\] are not global blocks \(2, 5\)",
    ),
    "resize crop": ({"resize": "crop"}, r"resize must be one of"),
    "float_scale 0": ({"float_scale": 0}, r"float_scale must be a positive number"),
}


@pytest.mark.parametrize(("options", "message"), STREAM_OPTIONS.values(), ids=STREAM_OPTIONS.keys())
def test_stream_options_are_refused_when_the_stream_opens(pipe, options, message) -> None:
    with pytest.raises(ValueError, match=message):
        pipe.new_stream(**options)


def test_the_largest_radius_the_grid_allows_runs(pipe) -> None:
    stream = pipe.new_stream(policy=FixedKeep(49), radius=13, score_threshold=0.28)
    frame = np.zeros((224, 224, 3), np.uint8)
    assert [stream.step(frame).k for _ in range(2)] == [196, 49]


def test_unknown_stream_options_are_named(pipe) -> None:
    with pytest.raises(TypeError, match=r"unknown stream options \['keep'\]; the options are: "):
        pipe.new_stream(keep=77)


PRUNING = {
    "empty rollout blocks": (
        {"rollout_blocks": ()},
        r"rollout_blocks must be a non-empty sequence of global block indices, or None",
    ),
    "rollout block 1.5": ({"rollout_blocks": (1.5,)}, r"a rollout block must be an integer"),
    "novelty_share 1": ({"novelty_share": 1.0}, r"novelty_share must be a number in \[0, 1\)"),
    "novelty_share -0.1": ({"novelty_share": -0.1}, r"novelty_share must be a number"),
    "target_threshold 2": (
        {"target_threshold": 2.0},
        r"target_threshold must be a number in \[0, 1\], got 2\.0",
    ),
    "target_threshold NaN": ({"target_threshold": NAN}, r"target_threshold must be a number"),
    "track_union 1": ({"track_union": 1}, r"track_union must be True or False, got 1"),
    "similarity": ({"similarity": "l2"}, r"similarity must be dot or cosine, got 'l2'"),
    "novelty": (
        {"novelty": "previous"},
        r"novelty must be one of \('match', 'cache'\), got 'previous'",
    ),
}


@pytest.mark.parametrize(("settings", "message"), PRUNING.values(), ids=PRUNING.keys())
def test_pruning_settings_are_refused_when_made(settings, message) -> None:
    with pytest.raises(ValueError, match=message):
        PruningConfig(**settings)


def test_rollout_blocks_given_as_a_list_are_kept_as_a_tuple() -> None:
    assert PruningConfig(rollout_blocks=[11, 8]).rollout_blocks == (11, 8)


def test_postprocess_and_tracking_check_their_arguments() -> None:
    boxes, scores = torch.zeros(4, 4), torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"nms_iou must be a number in \(0, 1\]"):
        postprocess(boxes, scores, nms_iou=5)
    with pytest.raises(ValueError, match=r"max_detections must be an integer >= 1"):
        postprocess(boxes, scores, max_detections=-1)
    z = torch.zeros(16, 8)
    with pytest.raises(ValueError, match=r"tracking radius must be an integer in 0\.\.3"):
        match_tokens(z, z, 4, 1000)


CLI = {
    "run --keep 0": (["run", "pkg", "--synthetic", "4", "--keep", "0"], "--keep"),
    "run --synthetic 0": (["run", "pkg", "--synthetic", "0"], "--synthetic"),
    "run --max-frames 0": (["run", "pkg", "--video", "v.mp4", "--max-frames", "0"], "--max-frames"),
    "run --mass 0": (["run", "pkg", "--synthetic", "4", "--mass", "0"], "--mass"),
    "run --mass 1.5": (["run", "pkg", "--synthetic", "4", "--mass", "1.5"], "--mass"),
    "run --latency-budget 0": (
        ["run", "pkg", "--synthetic", "4", "--latency-budget", "0"],
        "--latency-budget",
    ),
    "run --reset-every -1": (["run", "pkg", "--synthetic", "4", "--reset-every", "-1"], "--reset"),
    "run --radius 1.5": (["run", "pkg", "--synthetic", "4", "--radius", "1.5"], "--radius"),
    "eval --keep 0,64": (["eval", "--keep", "0,64"], "--keep"),
    "eval --sequences 0": (["eval", "--sequences", "0"], "--sequences"),
    "eval --frames 0": (["eval", "--frames", "0"], "--frames"),
    "eval --sampling 0": (["eval", "--sampling", "0"], "--sampling"),
    "eval --ablate-r -1": (["eval", "--ablate-r=-1"], "--ablate-r"),
    "flops --keep 0": (["flops", "--keep", "0"], "--keep"),
    "flops --size 0": (["flops", "--size", "0"], "--size"),
    "build --mem-pool-size 0": (["build", "pkg", "--mem-pool-size", "0"], "--mem-pool-size"),
}


@pytest.mark.parametrize(("argv", "flag"), CLI.values(), ids=CLI.keys())
def test_cli_numbers_are_refused_by_the_parser(argv, flag, capsys) -> None:
    """Before anything loads: argparse's usage error (exit 2) names the flag and the range,
    where `--synthetic 0` used to fail after loading with "fmean requires at least one
    data point"."""
    with pytest.raises(SystemExit) as caught:
        main([*argv, "--out", "o"] if argv[0] == "run" else argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err
    assert "expected" in err and any(r in err for r in (">= ", "> 0", "(0, 1]")), err
