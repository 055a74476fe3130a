"""Broken video files: errors name the file and the frame, the frames processed before the
error are written, --skip-bad-frames skips and counts, a truncated file gives a warning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rgtp.cli import main
from rgtp.core.selection import FixedKeep
from rgtp.runtime import Pipeline, StreamOptions
from rgtp.runtime.run import RunError, run_and_write
from rgtp.runtime.video import VideoError, VideoReader, VideoWarning, read_frames, write_video
from tests.conftest import moving_frames

FRAMES = 20


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """A good MP4 and TS of 20 frames, and broken copies: bytes flipped a third of the way
    in (corrupt), cut inside a TS packet about half way (truncated)."""
    d = tmp_path_factory.mktemp("videos")
    frames = list(moving_frames(FRAMES, 64, speed=6.0))
    out = {}
    for ext in ("mp4", "ts"):
        good = d / f"good.{ext}"
        assert write_video(good, frames) == FRAMES
        data = bytearray(good.read_bytes())
        mid = len(data) // 3
        data[mid : mid + 400 : 7] = bytes(b ^ 0xFF for b in data[mid : mid + 400 : 7])
        (d / f"corrupt.{ext}").write_bytes(data)
        (d / f"truncated.{ext}").write_bytes(good.read_bytes()[: len(data) // 2 + 100])
        out |= {f"good.{ext}": good, f"corrupt.{ext}": d / f"corrupt.{ext}"}
        out[f"truncated.{ext}"] = d / f"truncated.{ext}"
    return out


def test_good_videos_read_whole(videos) -> None:
    for name in ("good.mp4", "good.ts"):
        assert len(list(read_frames(videos[name]))) == FRAMES
    assert len(list(VideoReader(videos["good.mp4"], max_frames=5))) == 5


@pytest.fixture(scope="module")
def bad_frame(videos) -> int:
    """The position of the one undecodable frame of corrupt.mp4 (where the flipped bytes
    land depends on the encoder), found by skipping it."""
    reader = VideoReader(videos["corrupt.mp4"], skip_bad_frames=True)
    assert len(list(reader)) == FRAMES - 1 and len(reader.skipped) == 1
    return reader.skipped[0]


def test_a_corrupt_frame_names_the_file_and_the_frame(videos, bad_frame) -> None:
    path = videos["corrupt.mp4"]
    with pytest.raises(VideoError) as caught:
        list(VideoReader(path))
    assert str(caught.value) == (
        f"{path}: cannot decode frame {bad_frame} (Invalid data found when processing input); "
        "--skip-bad-frames (skip_bad_frames=True) skips such frames"
    )
    assert 0 < bad_frame < FRAMES - 1


def test_a_truncated_mp4_is_not_a_readable_video(videos) -> None:
    path = videos["truncated.mp4"]  # MP4 keeps its index at the end: nothing to read
    with pytest.raises(VideoError, match=rf"^{path}: not a readable video \(Invalid data"):
        list(read_frames(path))


def test_a_truncated_ts_ends_early_with_a_warning(videos) -> None:
    path = videos["truncated.ts"]
    with pytest.warns(VideoWarning, match=r"ends inside a transport-stream packet .*truncated"):
        n = len(list(read_frames(path)))
    assert 0 < n < FRAMES


def test_other_bad_files_name_the_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"video not found: .*missing\.mp4"):
        list(read_frames(tmp_path / "missing.mp4"))
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 100)
    with pytest.raises(VideoError, match=rf"{text}: not a readable video"):
        list(read_frames(text))


@pytest.fixture(scope="module")
def stream_options(tiny_detector) -> tuple[Pipeline, StreamOptions]:
    n = tiny_detector.cfg.backbone.num_tokens
    pipe = Pipeline.from_model(tiny_detector, buckets=[n // 4, n])
    return pipe, StreamOptions(policy=FixedKeep(n // 4), task={"score_threshold": 0.28})


def test_a_run_writes_the_frames_before_a_bad_frame_then_fails(
    videos, bad_frame, stream_options, tmp_path
) -> None:
    pipe, options = stream_options
    with pytest.raises(RunError) as caught:
        run_and_write(pipe.new_stream(options), VideoReader(videos["corrupt.mp4"]), tmp_path)
    message = str(caught.value)
    assert f"{videos['corrupt.mp4']}: cannot decode frame {bad_frame}" in message
    written = tmp_path / "detections.json"
    assert f"the {bad_frame} frames before it are written to {written}" in message
    detections = json.loads((tmp_path / "detections.json").read_text())
    assert [d["frame"] for d in detections] == list(range(bad_frame))
    # what was written is what a run over just those frames writes
    clean = pipe.new_stream(options)
    run_and_write(clean, read_frames(videos["corrupt.mp4"], bad_frame), tmp_path / "clean")
    assert detections == json.loads((tmp_path / "clean" / "detections.json").read_text())


def test_a_run_skipping_bad_frames_numbers_frames_as_in_the_video(
    videos, bad_frame, stream_options, tmp_path
) -> None:
    pipe, options = stream_options
    reader = VideoReader(videos["corrupt.mp4"], skip_bad_frames=True)
    results, paths = run_and_write(
        pipe.new_stream(options), reader, tmp_path, skipped=reader.skipped
    )
    assert len(results) == FRAMES - 1
    frames = json.loads(paths["frames"].read_text())
    assert [f["frame"] for f in frames] == [p for p in range(FRAMES) if p != bad_frame]
    summary = json.loads(paths["summary"].read_text())
    assert summary["frames"] == FRAMES - 1
    assert (summary["skipped_frames"], summary["skipped_positions"]) == (1, [bad_frame])


def cli_run(package: Path, video: Path, out: Path, *flags: str) -> int:
    return main(["run", str(package), "--video", str(video), "--out", str(out), "--quiet", *flags])


def test_cli_run_on_a_corrupt_video_fails_clearly_and_keeps_the_frames(
    small_packages, videos, bad_frame, tmp_path, capsys
) -> None:
    package = small_packages["a"][0]
    assert cli_run(package, videos["corrupt.mp4"], tmp_path / "a", "--keep", "64") == 1
    err = capsys.readouterr().err
    assert f"error: {videos['corrupt.mp4']}: cannot decode frame {bad_frame}" in err
    assert len(json.loads((tmp_path / "a" / "detections.json").read_text())) == bad_frame

    assert cli_run(package, videos["corrupt.mp4"], tmp_path / "b", "--skip-bad-frames") == 0
    printed = capsys.readouterr().out
    assert "19 frames, 19 steps on ort (cpu), skipped 1 undecodable frames" in printed
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["skipped_frames"] == 1

    assert cli_run(package, videos["truncated.ts"], tmp_path / "c") == 0
    captured = capsys.readouterr()
    assert "warning: " in captured.err and "looks truncated" in captured.err
    frames = json.loads((tmp_path / "c" / "frames.json").read_text())
    assert 0 < len(frames) < FRAMES


def test_frames_of_another_size_are_letterboxed_by_the_cli(small_packages, videos, tmp_path):
    """The 64 x 64 video runs on the 256 px model; boxes stay inside the 64 x 64 frame."""
    assert cli_run(small_packages["a"][0], videos["good.mp4"], tmp_path, "--max-frames", "4") == 0
    detections = json.loads((tmp_path / "detections.json").read_text())
    boxes = np.array([d["box"] for f in detections for d in f["detections"]]).reshape(-1, 4)
    assert len(detections) == 4 and ((boxes >= 0) & (boxes <= 64)).all()
