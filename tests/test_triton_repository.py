"""Serving without a server: the stream per sequence (`rgtp.serving.sequences`), the
generated `config.pbtxt`, and how `rgtp triton` writes, refuses and verifies a repository.
The real server runs in tests/test_triton_server.py; frame indices and retries, both
families and the settings checked against a package in tests/test_serving_*.py."""

from __future__ import annotations

import hashlib
import json
import re
import site
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

import rgtp
from rgtp.cli import main
from rgtp.package.manifest import ManifestError
from rgtp.runtime import FrameError, Pipeline
from rgtp.serving import (
    CapacityError,
    RepositoryError,
    RequestError,
    SequenceError,
    SequenceRequest,
    ServingSettings,
    StreamTable,
    write_repository,
)
from rgtp.serving import repository as repository_module
from rgtp.serving.model_config import PACKAGE_PARAMETER
from rgtp.serving.repository import MARKER, PACKAGE_DIR, VERSION
from rgtp.serving.sequences import error_status
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
def frames() -> list[np.ndarray]:
    return list(moving_frames(5, SIZE, speed=8.0))


def settings(pipe: Pipeline, **kw: object) -> ServingSettings:
    return ServingSettings(
        **{
            "keep": pipe.plan.num_tokens // 4,
            "idle_timeout_s": 10.0,
            "max_streams": 2,
            "score_threshold": SCORE,
            "float_scale": 1.0,
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
    pipe, frames, monkeypatch
) -> None:
    s = settings(pipe)
    want = reference(pipe, s, frames)
    table = StreamTable(pipe, s)
    calls = []
    step_many = pipe.step_many

    def counted(streams, frames):
        calls.append(len(streams))
        return step_many(streams, frames)

    monkeypatch.setattr(pipe, "step_many", counted)
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
        assert [o["STEP"][0, 0] for o in outs] == [t, t]
    assert len(table) == 0
    assert calls == [2] * len(frames)  # both streams of an execute in one step_many call


def test_a_request_without_start_for_an_unknown_id_is_refused(pipe, frames) -> None:
    table = StreamTable(pipe, settings(pipe))
    (out,) = table.execute([request(7, frames[0])])
    assert isinstance(out, SequenceError)
    assert "sequence 7 has no stream: its first request must carry START" in str(out)


def test_bad_requests_get_errors_and_leave_every_stream_intact(pipe, frames) -> None:
    s = settings(pipe, max_pixels=300 * 300)
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
        (
            request(1, np.zeros((1, 0, 3), np.uint8)),
            FrameError,
            r"frame has no pixels: shape \(1, 0, 3\)",
        ),
        (
            request(1, np.zeros((300, 301, 3), np.uint8)),
            RequestError,
            r"FRAME is 300 x 301 = 90300 pixels, more than this model reads \(90000 pixels",
        ),
        (
            SequenceRequest(
                1,
                False,
                False,
                {"FRAME": frames[2][None], "FRAME_INDEX": -np.ones((1, 1), np.int64)},
            ),
            RequestError,
            r"FRAME_INDEX is int64 of shape \[1, 1\] with values \[-1\]: expected one int64 >= 0",
        ),
    ]
    outs = table.execute([b[0] for b in bad] + [request(2, frames[2])])
    for out, (_, error, message) in zip(outs, bad, strict=False):
        assert isinstance(out, error), out
        assert re.search(message, str(out)), str(out)
        assert error_status(out) == "INVALID_ARG"
    assert_outputs_equal(outs[-1], want[2])  # the other stream, in the same execute
    for t in range(2, len(frames)):  # the refused frames changed nothing in stream 1
        (out,) = table.execute([request(1, frames[t])])
        assert_outputs_equal(out, want[t])
    # float frames: pixel = value * the repository's float scale (1 here)
    (out,) = table.execute([request(2, frames[3].astype(np.float32), name="FRAME_FLOAT")])
    assert_outputs_equal(out, want[3])
    unscaled = StreamTable(pipe, settings(pipe, float_scale=None))
    (refused,) = unscaled.execute(
        [request(3, frames[0] / np.float32(255), True, name="FRAME_FLOAT")]
    )
    assert isinstance(refused, FrameError) and error_status(refused) == "INVALID_ARG"
    assert "float32 frame refused: the stream was opened without float_scale" in str(refused)


def test_end_and_idle_timeout_free_streams_and_max_streams_holds(pipe, frames) -> None:
    clock = Clock()
    table = StreamTable(pipe, settings(pipe, idle_timeout_s=5.0), clock)
    table.execute([request(1, frames[0], start=True), request(2, frames[0], start=True)])
    (full,) = table.execute([request(3, frames[0], start=True)])
    assert isinstance(full, CapacityError) and error_status(full) == "UNAVAILABLE"
    assert "2 streams are open, the most this model holds (max streams 2)" in str(full)
    (after,) = table.execute([request(3, frames[1])])  # a refused START opened nothing
    assert isinstance(after, SequenceError) and "sequence 3 has no stream" in str(after)
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
    # Triton keeps 4x the slots, so every START reaches the model, and frees an idle slot
    # after twice the model's timeout, so the model frees its stream first
    assert seq.oldest.max_candidate_sequences == 16
    assert seq.oldest.max_queue_delay_microseconds == 0
    assert seq.max_sequence_idle_microseconds == 5_000_000
    assert [c.name for c in seq.control_input] == ["START", "END"]
    assert {i.name: i.optional for i in cfg.input} == {
        "FRAME": True,
        "FRAME_FLOAT": True,
        "FRAME_INDEX": True,
    }
    assert [o.name for o in cfg.output] == [
        *("BOXES", "SCORES", "LABELS", "K", "KEEP", "STEP", "TIMINGS", "STREAMS")
    ]
    assert ServingSettings.from_json(cfg.parameters["rgtp_settings"].string_value) == s
    assert set(cfg.parameters) == {"rgtp_settings", PACKAGE_PARAMETER}
    digest = "sha256:" + hashlib.sha256((package / "manifest.json").read_bytes()).hexdigest()
    assert cfg.parameters[PACKAGE_PARAMETER].string_value == digest
    version = model / VERSION
    assert (version / "model.py").read_text() == repository_module.TEMPLATE.read_text()
    assert sorted(p.name for p in (version / PACKAGE_DIR).iterdir()) == sorted(
        p.name for p in package.iterdir()
    )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries
    # every file in the marker with its sha256
    marker = json.loads((tmp_path / "repo" / MARKER).read_text())
    files = sorted(p for p in (tmp_path / "repo").rglob("*") if p.is_file() and p.name != MARKER)
    assert marker["files"] == {
        p.relative_to(tmp_path / "repo").as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in files
    }


def test_a_repository_names_no_path_of_the_machine_that_wrote_it(package, tmp_path) -> None:
    model = write_repository(package, tmp_path / "repo", ServingSettings(keep=64))
    paths = {
        str(Path(rgtp.__file__).resolve().parents[1]),
        sys.prefix,
        sys.base_prefix,
        str(Path.home()),
        str(tmp_path),
        *site.getsitepackages(),
    }
    for file in model.parent.rglob("*"):
        if file.is_file() and file.suffix in (".pbtxt", ".py", ".json"):
            text = file.read_text()
            assert not [p for p in paths if p in text], file


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
    with pytest.raises(RepositoryError, match=r"files it did not write.*\(extra.txt\)"):
        write_repository(package, repo, s, force=True)
    # a marker that lists a user's file cannot make --force delete it: its sha256 is not
    # the one listed, and a file rgtp wrote that changed since is kept too
    marker = json.loads((repo / MARKER).read_text())
    marker["files"]["extra.txt"] = "0" * 64
    (repo / MARKER).chmod(0o644)
    (repo / MARKER).write_text(json.dumps(marker))
    config = repo / "rgtp_vitdet-small" / "config.pbtxt"
    config.chmod(0o644)
    config.write_text(config.read_text() + "# mine\n")
    with pytest.raises(RepositoryError, match=r"\(extra.txt, rgtp_vitdet-small/config.pbtxt\)"):
        write_repository(package, repo, s, force=True)
    assert (repo / "extra.txt").read_text() == "mine" and "# mine" in config.read_text()
    (repo / "extra.txt").unlink()
    config.write_text(config.read_text().replace("# mine\n", ""))
    pycache = repo / "rgtp_vitdet-small" / VERSION / "__pycache__"
    pycache.mkdir()
    (pycache / "model.cpython-311.pyc").write_bytes(b"compiled")  # as the stub leaves it
    write_repository(package, repo, s, force=True)
    assert not pycache.exists()
    monkeypatch.chdir(repo)
    with pytest.raises(RepositoryError, match="it is the working directory"):
        write_repository(package, ".", s, force=True)


def test_rgtp_triton_writes_a_repository_or_says_why_not(package, tmp_path, capsys) -> None:
    out = tmp_path / "repo"
    assert main(["triton", str(package), "--out", str(out), "--keep", "64"]) == 0
    assert f"rgtp serve {out}" in capsys.readouterr().out
    trt = ["triton", str(package), "--out", str(tmp_path / "trt"), "--backend", "trt"]
    assert main(trt) == 1
    assert "has no TensorRT plans; build them first" in capsys.readouterr().err
    assert main(["triton", str(package), "--out", str(out), "--idle-timeout", "-1"]) == 2
    assert "idle timeout (seconds) must be a number in (0, 86400]" in capsys.readouterr().err
