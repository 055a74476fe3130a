"""Serving without a server, on tiny models: frame indices and retries, a classifier's
class scores per sequence, the step metrics, and settings checked against the package when
`rgtp triton` writes the repository (the messages stream creation gives)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from rgtp.cli import main
from rgtp.families.classification.vivit import ViViT
from rgtp.runtime import Pipeline
from rgtp.serving import SequenceError, SequenceRequest, ServingSettings, StreamTable
from rgtp.serving.model_config import config_text, model_config
from rgtp.serving.sequences import error_status
from tests.conftest import moving_frames, randomize
from tests.test_vivit_pruned import CFG as VIVIT

K = 40  # one of the K of conftest's `tiny_package` (the tiny detector: N = 196, two stages)


def request(cid: int, frame: np.ndarray, index: int | None, start=False, end=False):
    inputs = {"FRAME": frame[None]}
    if index is not None:
        inputs["FRAME_INDEX"] = np.array([[index]], dtype=np.int64)
    return SequenceRequest(cid, start, end, inputs)


def assert_same_response(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if name != "STREAMS":
            assert np.array_equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def pipe(tiny_package) -> Pipeline:
    return Pipeline.load(tiny_package, backend="ort")


@pytest.fixture(scope="module")
def frames(tiny_detector) -> list[np.ndarray]:
    return list(moving_frames(6, tiny_detector.cfg.backbone.img_size, speed=8.0))


def test_a_resent_frame_returns_its_response_and_steps_nothing(pipe, frames) -> None:
    settings = ServingSettings(keep=K, max_streams=2, score_threshold=0.28)
    stream = pipe.new_stream(settings.stream_options())
    want = [stream.step(f) for f in frames]
    table = StreamTable(pipe, settings)
    (first,) = table.execute([request(1, frames[0], 0, start=True)])
    (second,) = table.execute([request(1, frames[1], 1)])
    # the client gave up on frame 1 and sends it again, twice: its stored response
    for _ in range(2):
        (again,) = table.execute([request(1, frames[1], 1)])
        assert_same_response(again, second)
    # an index ahead, or before the last, is refused naming the one expected
    for index in (3, 0):
        (refused,) = table.execute([request(1, frames[2], index)])
        assert isinstance(refused, SequenceError) and error_status(refused) == "INVALID_ARG"
        assert f"sequence 1 expects frame 2 (FRAME_INDEX 2), got {index}" in str(refused)
    # a refused frame does not count: sent again with its index, it steps
    (bad,) = table.execute([request(1, frames[2][..., :2], 2)])
    assert not isinstance(bad, dict)
    got = [first, second]
    got += [table.execute([request(1, frames[t], t)])[0] for t in range(2, len(frames))]
    for out, result in zip(got, want, strict=True):  # as if no frame had been resent
        assert out["STEP"][0, 0] == result.index and out["K"][0, 0] == result.k
        assert np.array_equal(out["KEEP"][0], result.keep.numpy())
        assert np.array_equal(out["BOXES"][0], result.detections.boxes.numpy())
        assert np.array_equal(out["SCORES"][0], result.detections.scores.numpy())
    # the last frame again with END: its stored response, and the stream is freed
    (closing,) = table.execute([request(1, frames[-1], len(frames) - 1, end=True)])
    assert_same_response(closing, got[-1])
    assert closing["STREAMS"][0, 0] == 0 and len(table) == 0


def test_a_start_at_a_later_frame_resumes_the_open_stream(pipe, frames) -> None:
    """What a client sends after Triton dropped its sequence (a cancelled queued request):
    START with the frame's index goes on with the stream the model still holds, and counts
    against no capacity; with no stream, or at another index, it is refused as it is."""
    settings = ServingSettings(keep=K, max_streams=1, score_threshold=0.28)
    stream = pipe.new_stream(settings.stream_options())
    want = [stream.step(f) for f in frames]
    table = StreamTable(pipe, settings)
    got = [table.execute([request(1, frames[t], t, start=t == 0)])[0] for t in range(3)]
    # resumed at the next frame: it steps (one stream open, the model full: still taken)
    got += table.execute([request(1, frames[3], 3, start=True)])
    # resumed at the last frame taken: its stored response, nothing stepped
    (again,) = table.execute([request(1, frames[3], 3, start=True)])
    assert_same_response(again, got[3])
    # resumed elsewhere: refused naming the frame expected, the stream unchanged
    (ahead,) = table.execute([request(1, frames[5], 5, start=True)])
    assert isinstance(ahead, SequenceError) and "expects frame 4 (FRAME_INDEX 4), got 5" in str(
        ahead
    )
    # another sequence resuming: it has no stream, so it is refused, naming the way out
    (unknown,) = table.execute([request(2, frames[4], 4, start=True)])
    assert isinstance(unknown, SequenceError) and error_status(unknown) == "INVALID_ARG"
    assert "sequence 2 cannot resume at frame 4: it has no stream" in str(unknown)
    assert "start it again at frame 0 (FRAME_INDEX 0)" in str(unknown)
    got += [table.execute([request(1, frames[t], t)])[0] for t in range(4, len(frames))]
    for out, result in zip(got, want, strict=True):  # as if the sequence had not been dropped
        assert out["STEP"][0, 0] == result.index and out["K"][0, 0] == result.k
        assert np.array_equal(out["KEEP"][0], result.keep.numpy())
        assert np.array_equal(out["BOXES"][0], result.detections.boxes.numpy())
    assert len(table) == 1
    # START at frame 0 still opens the stream afresh: the first frame stepped again
    (fresh,) = table.execute([request(1, frames[0], 0, start=True)])
    for name in ("STEP", "K", "KEEP", "BOXES", "SCORES", "LABELS"):
        assert np.array_equal(fresh[name], got[0][name]), name


def test_a_classifier_serves_class_scores_per_sequence(tmp_path) -> None:
    """Three interleaved ViViT sequences, one execute per time: each sequence's responses
    equal its stream's in process; a frame that only fills a tubelet is flagged STEP -1."""
    torch.manual_seed(0)
    vivit = randomize(ViViT(VIVIT))
    pipe = Pipeline.from_model(vivit, [14, 24], "per-block")
    settings = ServingSettings(backend="torch", keep=14, max_streams=3)
    clips = [list(moving_frames(20, 96, seed=s, speed=4.0)) for s in range(3)]
    want = []
    for clip in clips:
        stream = pipe.new_stream(settings.stream_options())
        want.append([stream.step(f) for f in clip])
    table = StreamTable(pipe, settings)
    scored = 0
    for t in range(len(clips[0])):
        outs = table.execute([request(c, clips[c][t], t, start=t == 0) for c in (2, 0, 1)])
        for c, out in zip((2, 0, 1), outs, strict=True):
            assert not isinstance(out, Exception), out
            result = want[c][t]
            if result is None:
                assert out["STEP"][0, 0] == -1 and out["K"][0, 0] == 0
                assert out["CLASS_SCORES"].shape == (1, 0) and out["KEEP"].shape == (1, 0)
                continue
            assert (out["STEP"][0, 0], out["K"][0, 0]) == (result.index, result.k)
            assert np.array_equal(out["KEEP"][0], result.keep.numpy())
            if result.scores is None:  # before the clip's s steps
                assert out["CLASS_SCORES"].shape == (1, 0)
            else:
                assert np.array_equal(out["CLASS_SCORES"][0], result.scores.numpy())
                scored += 1
    assert scored >= 3


def test_every_step_is_observed_for_the_metrics(pipe, frames) -> None:
    seen: list[tuple[int, float]] = []
    table = StreamTable(pipe, ServingSettings(keep=K), observe=lambda k, ms: seen.append((k, ms)))
    table.execute([request(1, frames[0], 0, start=True), request(2, frames[0], None, True)])
    table.execute([request(1, frames[1], 1), request(2, frames[1], None)])
    table.execute([request(1, frames[1], 1)])  # resent: no step
    assert [k for k, _ in seen] == [196, 196, K, K]
    assert all(ms > 0 for _, ms in seen)


@pytest.mark.parametrize(
    ("flags", "options"),
    [
        (["--keep", "300"], {"keep": 300}),
        (["--keep", str(K), "--radius", "99"], {"keep": K, "radius": 99}),
        (["--keep", str(K), "--reset", "checkerboard"], {"keep": K, "reset": "checkerboard"}),
        (["--keep", "60/40"], {"keep": (60, 40)}),
    ],
)
def test_settings_are_checked_against_the_package_when_written(
    tiny_package, pipe, tmp_path, capsys, flags, options
) -> None:
    """What a START would meet, met by `rgtp triton`, with stream creation's message."""
    with pytest.raises(ValueError) as opening:
        pipe.new_stream(ServingSettings(**options).stream_options())
    out = tmp_path / "repo"
    assert main(["triton", str(tiny_package), "--out", str(out), *flags]) == 1
    assert capsys.readouterr().err == f"error: {opening.value}\n"
    assert not out.exists()


def test_a_classifier_model_config_has_class_scores() -> None:
    settings = ServingSettings(keep=14, float_scale=255.0)
    cfg = model_config("rgtp_tiny-vivit", settings, "classification", "0" * 64)
    assert [o.name for o in cfg.output] == [
        *("CLASS_SCORES", "K", "KEEP", "STEP", "TIMINGS", "STREAMS")
    ]
    parsed = text_format.Parse(config_text(cfg), mc.ModelConfig())
    assert ServingSettings.from_json(parsed.parameters["rgtp_settings"].string_value) == settings
