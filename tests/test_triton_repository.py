"""Serving without a server: the stream per sequence (`rgtp.serving.sequences`), the
generated `config.pbtxt`, and how `rgtp triton` writes, refuses and verifies a repository.
The real server runs in tests/test_triton_server.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from rgtp.cli import main
from rgtp.models.manifest import ManifestError
from rgtp.runtime import FrameError, Pipeline
from rgtp.serving import (
    RepositoryError,
    RequestError,
    SequenceError,
    SequenceRequest,
    ServingSettings,
    StreamTable,
    write_repository,
)
from rgtp.serving import repository as repository_module
from rgtp.serving.repository import MARKER, PACKAGE_DIR, VERSION
from tests.conftest import moving_frames

SIZE = 224
# The random tiny head scores every location about 0.27: this keeps some dozens of boxes,
# so that detections are compared, without a thousand-box NMS per frame.
SCORE = 0.28


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def pipe(tiny_detector) -> Pipeline:
    n = tiny_detector.cfg.backbone.num_tokens
    return Pipeline.from_model(tiny_detector, buckets=[n // 4, n])


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return list(moving_frames(5, SIZE, speed=8.0))


def settings(pipe: Pipeline, **kw: object) -> ServingSettings:
    return ServingSettings(
        **{
            "keep": pipe.plan.num_tokens // 4,
            "idle_timeout_s": 10.0,
            "max_streams": 2,
            "score_threshold": SCORE,
        }
        | kw
    )


def request(cid: int, frame: np.ndarray | None, start=False, end=False, name="FRAME"):
    inputs = {} if frame is None else {name: frame[None]}
    return SequenceRequest(cid, start, end, inputs)


def reference(pipe: Pipeline, s: ServingSettings, frames: list[np.ndarray]) -> list:
    stream = pipe.new_stream(s.stream_options())
    return [stream.step(f) for f in frames]


def assert_outputs_equal(out: dict, want) -> None:
    assert out["K"][0, 0] == want.k
    assert np.array_equal(out["KEEP"][0], want.keep.numpy())
    assert np.array_equal(out["BOXES"][0], want.detections.boxes.numpy())
    assert np.array_equal(out["SCORES"][0], want.detections.scores.numpy())
    assert np.array_equal(out["LABELS"][0], want.detections.labels.numpy())
    assert set(json.loads(out["TIMINGS"][0, 0].decode())) >= {"embed", "stages", "head", "total"}


def test_interleaved_sequences_and_one_execute_of_several_equal_their_own_streams(
    pipe, frames
) -> None:
    s = settings(pipe)
    want = reference(pipe, s, frames)
    table = StreamTable(pipe, s)
    # two sequences over the same frames, frame t of both in one execute
    for t, frame in enumerate(frames):
        last = t == len(frames) - 1
        outs = table.execute([request(c, frame, t == 0, last) for c in (5, 9)])
        for out in outs:
            assert not isinstance(out, Exception), out
            assert_outputs_equal(out, want[t])
        # streams open after each request: the first START, both, the first END
        expected = [1, 2] if t == 0 else [1, 0] if last else [2, 2]
        assert [o["STREAMS"][0, 0] for o in outs] == expected
    assert len(table) == 0


def test_a_request_without_start_for_an_unknown_id_is_refused(pipe, frames) -> None:
    table = StreamTable(pipe, settings(pipe))
    (out,) = table.execute([request(7, frames[0])])
    assert isinstance(out, SequenceError)
    assert "sequence 7 has no stream: its first request must carry START" in str(out)


def test_bad_requests_get_errors_and_leave_every_stream_intact(pipe, frames) -> None:
    s = settings(pipe)
    want = reference(pipe, s, frames)
    table = StreamTable(pipe, s)
    table.execute([request(1, frames[0], start=True), request(2, frames[0], start=True)])
    table.execute([request(1, frames[1]), request(2, frames[1])])
    nan = frames[2].astype(np.float32)
    nan[3, 4, 1] = np.nan
    bad = [
        (request(1, None), RequestError, "the request has no frame; send one frame"),
        (
            SequenceRequest(1, False, False, {"FRAME": frames[2][None], "FRAME_FLOAT": nan[None]}),
            RequestError,
            "the request has both FRAME and FRAME_FLOAT",
        ),
        (
            SequenceRequest(1, False, False, {"FRAME": np.stack([frames[2], frames[2]])}),
            RequestError,
            r"FRAME has shape \[2, 224, 224, 3\]: a request carries one frame",
        ),
        (request(1, frames[2][..., :2]), FrameError, r"frame has shape \(224, 224, 2\)"),
        (request(1, frames[2].astype(np.int32)), FrameError, "frame dtype int32 is not accepted"),
        (request(1, nan, name="FRAME_FLOAT"), FrameError, "frame has NaN values"),
    ]
    outs = table.execute([b[0] for b in bad] + [request(2, frames[2])])
    for out, (_, error, message) in zip(outs, bad, strict=False):
        assert isinstance(out, error), out
        assert re.search(message, str(out)), str(out)
    assert_outputs_equal(outs[-1], want[2])  # the other stream, in the same execute
    for t in range(2, len(frames)):  # the refused frames changed nothing in stream 1
        (out,) = table.execute([request(1, frames[t])])
        assert_outputs_equal(out, want[t])
    # float frames are pixel values in [0, 255], like uint8 ones
    (out,) = table.execute([request(2, frames[3].astype(np.float32), name="FRAME_FLOAT")])
    assert_outputs_equal(out, want[3])


def test_end_and_idle_timeout_free_streams_and_max_streams_holds(pipe, frames) -> None:
    clock = Clock()
    table = StreamTable(pipe, settings(pipe, idle_timeout_s=5.0), clock)
    table.execute([request(1, frames[0], start=True), request(2, frames[0], start=True)])
    (full,) = table.execute([request(3, frames[0], start=True)])
    assert isinstance(full, SequenceError)
    assert "2 streams are open, the most this model holds (max streams 2)" in str(full)
    clock.now = 4.0
    table.execute([request(1, frames[1])])  # 1 seen at 4 s, 2 last at 0 s
    clock.now = 5.5
    assert table.reap() == 1 and len(table) == 1
    (late,) = table.execute([request(2, frames[1])])
    assert isinstance(late, SequenceError) and "after 5 s without a request" in str(late)
    (out,) = table.execute([request(1, None, end=True)])  # END frees even a refused frame
    assert isinstance(out, RequestError) and len(table) == 0


def test_settings_are_checked_when_made() -> None:
    with pytest.raises(ValueError, match=r"idle timeout \(seconds\) must be a number in"):
        ServingSettings(idle_timeout_s=0)
    with pytest.raises(ValueError, match="give keep"):
        ServingSettings(keep=10, mass=0.5)
    with pytest.raises(ValueError, match="backend must be one of"):
        ServingSettings(backend="onnx")
    s = ServingSettings(keep=77, max_streams=3, idle_timeout_s=2.5)
    assert ServingSettings.from_json(s.to_json()) == s
    schedule = ServingSettings(keep=[96, 85, 69, 58])  # one K per stage
    assert ServingSettings.from_json(schedule.to_json()) == schedule
    assert schedule.stream_options().policy.schedule == (96, 85, 69, 58)
    with pytest.raises(ValueError, match="increases at stage 1"):
        ServingSettings(keep=(64, 96, 48, 32))


@pytest.fixture(scope="module")
def package(small_packages) -> Path:
    return small_packages["a"][0]


def test_the_repository_layout_and_its_config(package, tmp_path) -> None:
    s = ServingSettings(keep=64, max_streams=4, idle_timeout_s=2.5)
    model = write_repository(package, tmp_path / "repo", s)
    assert model == tmp_path / "repo" / "rgtp_vitdet-small"
    cfg = text_format.Parse((model / "config.pbtxt").read_text(), mc.ModelConfig())
    assert (cfg.name, cfg.backend, cfg.max_batch_size) == (model.name, "python", 4)
    seq = cfg.sequence_batching
    assert seq.WhichOneof("strategy_choice") == "oldest"
    assert seq.oldest.max_candidate_sequences == 4
    assert seq.max_sequence_idle_microseconds == 2_500_000
    assert [c.name for c in seq.control_input] == ["START", "END"]
    assert {i.name: i.optional for i in cfg.input} == {"FRAME": True, "FRAME_FLOAT": True}
    assert [o.name for o in cfg.output] == [
        *("BOXES", "SCORES", "LABELS", "K", "KEEP", "TIMINGS", "STREAMS")
    ]
    assert ServingSettings.from_json(cfg.parameters["rgtp_settings"].string_value) == s
    sys_path = json.loads(cfg.parameters["rgtp_sys_path"].string_value)
    assert Path(sys_path[0], "rgtp", "serving", "sequences.py").is_file()
    version = model / VERSION
    assert (version / "model.py").read_text() == repository_module.TEMPLATE.read_text()
    assert sorted(p.name for p in (version / PACKAGE_DIR).iterdir()) == sorted(
        p.name for p in package.iterdir()
    )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries


def test_a_changed_package_file_is_refused_at_write_and_at_load(package, tmp_path) -> None:
    model = write_repository(package, tmp_path / "repo", ServingSettings(keep=64))
    copied = model / VERSION / PACKAGE_DIR
    (copied / "head.onnx").chmod(0o644)
    with open(copied / "head.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"\x00" if f.read(1) != b"\x00" else b"\x01")
    with pytest.raises(ManifestError, match=r"head\.onnx: sha256 differs from the manifest"):
        Pipeline.load(copied, backend="ort")  # what the served model does at load
    with pytest.raises(ManifestError, match=r"head\.onnx: sha256 differs"):
        write_repository(copied, tmp_path / "other", ServingSettings())
    assert not (tmp_path / "other").exists()


def test_where_a_repository_may_be_written(package, tmp_path, monkeypatch) -> None:
    s = ServingSettings(keep=64)
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(RepositoryError, match="is not a repository rgtp wrote"):
        write_repository(package, foreign, s, force=True)
    assert (foreign / "keep.txt").read_text() == "mine"
    repo = tmp_path / "repo"
    write_repository(package, repo, s)
    with pytest.raises(RepositoryError, match="pass --force to replace it"):
        write_repository(package, repo, s)
    # a failure half-way leaves the earlier repository whole and no temporary behind
    monkeypatch.setattr(repository_module, "config_text", lambda cfg: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        write_repository(package, repo, ServingSettings(keep=128), force=True)
    monkeypatch.undo()
    assert json.loads((repo / MARKER).read_text())["model"] == "rgtp_vitdet-small"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "repo"]
    write_repository(package, repo, ServingSettings(keep=128), force=True)
    assert '\\"keep\\": 128' in (repo / "rgtp_vitdet-small" / "config.pbtxt").read_text()
    (repo / "extra.txt").write_text("mine")
    with pytest.raises(RepositoryError, match=r"files it did not \(extra.txt\)"):
        write_repository(package, repo, s, force=True)
    monkeypatch.chdir(repo)
    with pytest.raises(RepositoryError, match="it is the working directory"):
        write_repository(package, ".", s, force=True)


def test_rgtp_triton_writes_a_repository_or_says_why_not(package, tmp_path, capsys) -> None:
    out = tmp_path / "repo"
    assert main(["triton", str(package), "--out", str(out), "--keep", "64"]) == 0
    assert f"python -m rgtp.serving {out}" in capsys.readouterr().out
    trt = ["triton", str(package), "--out", str(tmp_path / "trt"), "--backend", "trt"]
    assert main(trt) == 2
    assert "has no TensorRT plans; build them first" in capsys.readouterr().err
    assert main(["triton", str(package), "--out", str(out), "--idle-timeout", "-1"]) == 2
    assert "idle timeout (seconds) must be a number in (0, 86400]" in capsys.readouterr().err
