"""The real Triton server (the one nvidia-pytriton bundles) serving the shipped vitdet-small
package on loopback ports: served detections and kept tokens equal the in-process runtime's,
sequences are freed by END, by the idle timeout and after a client goes away, and bad
requests are answered with INVALID_ARGUMENT while the other streams go on. Under load, on
the tiny detector (cheap frames): 16 concurrent sequences of 20 frames with as many streams,
none dropped and each equal to its stream in process bit for bit; twice as many sequences
as streams, the extra STARTs refused at once and the admitted ones complete; a frame resent
after a client deadline. A classifier package serves class scores. (64 concurrent
sequences: benchmarks/serve_load.py --verify.)"""

from __future__ import annotations

import contextlib
import io
import os
import re
import socket
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from rgtp.families.detection.boxes import Detections
from rgtp.runtime import Pipeline
from rgtp.serving import SequenceClient, ServingSettings, write_repository
from rgtp.serving.server import ServerError, TritonServer
from tests.conftest import assert_same_detections, moving_frames, synthvid_frames
from tests.test_vivit_pruned import PLAN as VIVIT_PLAN
from tests.test_vivit_pruned import random_vivit

IDLE_S = 5.0
SETTINGS = ServingSettings(keep=64, max_streams=8, idle_timeout_s=IDLE_S, float_scale=1.0)
CLIENT_DOC = Path(__file__).resolve().parents[1] / "docs" / "serving.md"
# tritonserver's stop waits (its --exit-timeout-secs, half of this) for every open sequence
# to end, and a sequence whose START the model refused stays open in Triton's sequence
# batcher until its idle timeout: after the refused STARTs below, the default 30 s made the
# stop wait its whole 15 s. The tests' servers stop in seconds; the stop itself (the group
# gone, ports and files freed) is asserted as before.
STOP_S = 6.0


@pytest.fixture(scope="module")
def package(small_packages) -> Path:
    return small_packages["a"][0]


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return synthvid_frames(12)


@pytest.fixture(scope="module")
def server(package, tmp_path_factory):
    model = write_repository(package, tmp_path_factory.mktemp("triton") / "repo", SETTINGS)
    with TritonServer(model.parent, stop_timeout_s=STOP_S) as srv:
        group, ports = srv.process.pid, list(srv.ports.values())
        srv.model = model.name
        yield srv
    # stopped: no process left of its group, every port free again
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)
    for port in ports:  # (a listener may take a port with connections in TIME_WAIT)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen()


def served_streams(server) -> int:
    """The model's own count of open streams, from the server's metrics endpoint."""
    text = urllib.request.urlopen(f"http://{server.metrics_url}/metrics").read().decode()
    return int(float(re.search(r"^rgtp_streams\{[^}]*\} (\S+)$", text, re.M)[1]))


def metric(server, name: str) -> float:
    text = urllib.request.urlopen(f"http://{server.metrics_url}/metrics").read().decode()
    return float(re.search(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.M)[1])


def frame_input(frame: np.ndarray, name: str = "FRAME", module=grpcclient):
    dtype = {np.dtype(np.uint8): "UINT8", np.dtype(np.float32): "FP32"}.get(frame.dtype, "INT32")
    x = module.InferInput(name, [1, *frame.shape], dtype)
    x.set_data_from_numpy(frame[None])
    return x


def infer(client, server, cid: int, frame: np.ndarray | None, start=False, end=False, **kw):
    inputs = [] if frame is None else [frame_input(frame, **kw)]
    return client.infer(
        server.model, inputs, sequence_id=cid, sequence_start=start, sequence_end=end
    )


def in_process(package: Path, frames: list[np.ndarray]) -> list:
    stream = Pipeline.load(package, backend=SETTINGS.backend).new_stream(SETTINGS.stream_options())
    return [stream.step(f) for f in frames]


def assert_same_as(response, want) -> None:
    got = Detections(
        torch.tensor(response.as_numpy("BOXES")[0]),
        torch.tensor(response.as_numpy("SCORES")[0]),
        torch.tensor(response.as_numpy("LABELS")[0]),
    )
    assert int(response.as_numpy("K")[0, 0]) == want.k
    assert np.array_equal(response.as_numpy("KEEP")[0], want.keep.numpy())
    assert_same_detections(got, want.detections)


def wait_for_streams(server, count: int, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while served_streams(server) != count:
        assert time.monotonic() < deadline, f"{served_streams(server)} streams, not {count}"
        time.sleep(0.2)


def test_three_streams_at_once_equal_the_in_process_runtime(server, package, frames) -> None:
    """Three sequences over three versions of the video, each from its own client thread, so
    that requests of several sequences reach one execute: every frame's detections and kept
    tokens equal those of the runtime in this process."""
    videos = [frames, [f[:, ::-1] for f in frames], [f[::-1] for f in frames]]
    want = [in_process(package, v) for v in videos]
    executes, requests = (
        metric(server, "nv_inference_exec_count"),
        metric(server, "nv_inference_request_success"),
    )
    got: dict[int, list] = {}

    def run(i: int) -> None:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        n = len(videos[i])
        got[i] = [
            infer(client, server, 100 + i, f, start=t == 0, end=t == n - 1)
            for t, f in enumerate(videos[i])
        ]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(3):
        assert len(got[i]) == len(frames) >= 12
        for response, result in zip(got[i], want[i], strict=True):
            assert_same_as(response, result)
    assert served_streams(server) == 0  # all three ended
    served = metric(server, "nv_inference_request_success") - requests
    assert served == 36
    # the sequence batcher handed the model several sequences' requests in one execute
    assert metric(server, "nv_inference_exec_count") - executes < served


def test_bad_requests_get_errors_and_other_streams_go_on(server, package, frames) -> None:
    want = in_process(package, frames[:6])
    client = grpcclient.InferenceServerClient(server.grpc_url)
    other = httpclient.InferenceServerClient(server.http_url)
    responses = [infer(client, server, 7, frames[0], start=True)]
    other_responses = [infer(other, server, 8, frames[0], start=True, module=httpclient)]
    responses.append(infer(client, server, 7, frames[1]))
    nan = frames[2].astype(np.float32)
    nan[10, 10, 0] = np.nan
    bad = [
        (frames[2][..., :2].copy(), {}, r"unexpected shape for input 'FRAME'"),
        (
            frames[2].astype(np.int32),
            {},
            r"input 'FRAME' data-type is 'INT32', but model '\S+' expects 'UINT8'",
        ),
        (None, {}, r"RequestError: the request has no frame; send one frame per request"),
        (nan, {"name": "FRAME_FLOAT"}, r"FrameError: frame has NaN values"),
        (np.zeros((0, 4, 3), np.uint8), {}, r"FrameError: frame has no pixels"),
    ]
    for frame, kw, message in bad:
        with pytest.raises(InferenceServerException, match=message) as refused:
            infer(client, server, 7, frame, **kw)
        assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    for t in range(2, 6):
        responses.append(infer(client, server, 7, frames[t], end=t == 5))
        other_responses.append(
            infer(other, server, 8, frames[t - 1], end=t == 5, module=httpclient)
        )
    for response, result in zip(responses, want, strict=True):
        assert_same_as(response, result)
    for response, result in zip(other_responses, want[:5], strict=True):
        assert_same_as(response, result)
    assert served_streams(server) == 0


def test_unknown_sequence_without_start_gets_a_clear_error(server, frames) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException, match="must specify the START flag"):
        infer(client, server, 999, frames[0])
    assert infer(client, server, 999, frames[0], start=True, end=True).as_numpy("K")[0, 0] > 0


def test_end_idle_timeout_and_a_gone_client_free_their_streams(server, frames) -> None:
    # a sequence that goes quiet (HTTP), and a gRPC streaming client that goes away
    http = httpclient.InferenceServerClient(server.http_url)
    for t in range(2):
        infer(http, server, 21, frames[t], start=t == 0, module=httpclient)
    received: list = []
    streaming = grpcclient.InferenceServerClient(server.grpc_url)
    streaming.start_stream(callback=lambda result, error: received.append((result, error)))
    for t in range(2):
        streaming.async_stream_infer(
            server.model, [frame_input(frames[t])], sequence_id=22, sequence_start=t == 0
        )
    while len(received) < 2:
        time.sleep(0.05)
    assert all(error is None for _, error in received)
    streaming.stop_stream(cancel_requests=True)
    streaming.close()
    ended = infer(
        grpcclient.InferenceServerClient(server.grpc_url),
        server,
        23,
        frames[0],
        start=True,
        end=True,
    )
    assert int(ended.as_numpy("STREAMS")[0, 0]) == 2  # END freed its own at once
    assert served_streams(server) == 2
    wait_for_streams(server, 0, within_s=IDLE_S + 5)
    with pytest.raises(InferenceServerException, match="START"):
        infer(http, server, 21, frames[2], module=httpclient)


def test_the_documented_client_example_runs(server) -> None:
    blocks = re.findall(r"```python\n(.*?)```", CLIENT_DOC.read_text(), re.S)
    (example,) = [b for b in blocks if "tritonclient" in b]
    assert '"127.0.0.1:8001"' in example and '"rgtp_vitdet-small"' in example
    example = example.replace("127.0.0.1:8001", server.grpc_url)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(example, "docs/serving.md", "exec"), {})
    lines = out.getvalue().splitlines()
    assert len(lines) == 8 and all(int(line.split()[1]) in (64, 256) for line in lines)
    assert served_streams(server) == 0


def test_a_changed_package_stops_the_server_start_and_leaves_nothing(tiny_package, tmp_path):
    model = write_repository(tiny_package, tmp_path / "repo", TINY)
    weights = model / "1" / "package" / "head.onnx"
    weights.chmod(0o644)
    with open(weights, "r+b") as f:
        f.seek(64)
        byte = f.read(1)
        f.seek(64)
        f.write(b"\x00" if byte != b"\x00" else b"\x01")
    srv = TritonServer(model.parent, ready_timeout_s=120)
    with pytest.raises(ServerError, match=r"(?s)exited with status 1.*sha256 differs"):
        srv.start()
    assert srv.process is None and srv.workdir is None


def test_a_pinned_repository_refuses_a_one_byte_manifest_edit(tiny_package, tmp_path):
    """The repository pins the package digest (config.pbtxt's rgtp_package_digest): one byte
    of the copied manifest changed (its files untouched, their hashes still right), the
    model refuses to load, naming the digest found and the one expected, and the server's
    start fails leaving nothing behind."""
    from rgtp.package.manifest import package_digest
    from tests.test_package_digest import tamper

    model = write_repository(tiny_package, tmp_path / "repo", TINY)
    copy = model / "1" / "package"
    expected = package_digest(copy)
    assert f'string_value: "{expected}"' in (model / "config.pbtxt").read_text()
    (copy / "manifest.json").chmod(0o644)
    tamper(copy)
    found = package_digest(copy)
    assert found != expected
    srv = TritonServer(model.parent, ready_timeout_s=120)
    message = re.escape(f"package digest {found}, expected {expected}")
    with pytest.raises(ServerError, match=rf"(?s)exited with status 1.*{message}"):
        srv.start()
    assert srv.process is None and srv.workdir is None


# Under load, on the tiny detector: 16 streams, 20 frames a sequence, 4 distinct videos
TINY_K, LOAD_FRAMES = 40, 20  # a bucket of conftest's shared tiny_package
TINY = ServingSettings(keep=TINY_K, max_streams=16, idle_timeout_s=30.0, score_threshold=0.28)


@pytest.fixture(scope="module")
def tiny_server(tiny_package, tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    model = write_repository(tiny_package, root / "repo", TINY)
    with TritonServer(model.parent, stop_timeout_s=STOP_S) as srv:
        srv.model, srv.package = model.name, tiny_package
        yield srv


@pytest.fixture(scope="module")
def tiny_videos(tiny_detector) -> list[list[np.ndarray]]:
    size = tiny_detector.cfg.backbone.img_size
    return [list(moving_frames(LOAD_FRAMES, size, seed=s, speed=6.0)) for s in range(4)]


@pytest.fixture(scope="module")
def tiny_want(tiny_server, tiny_videos) -> list[list]:
    pipe = Pipeline.load(tiny_server.package, backend=TINY.backend)
    streams = [pipe.new_stream(TINY.stream_options()) for _ in tiny_videos]
    return [[s.step(f) for f in v] for s, v in zip(streams, tiny_videos, strict=True)]


def indexed(frame: np.ndarray, index: int) -> list:
    """A frame and its index in the sequence (FRAME_INDEX), as a request's inputs."""
    at = grpcclient.InferInput("FRAME_INDEX", [1, 1], "INT64")
    at.set_data_from_numpy(np.array([[index]], dtype=np.int64))
    return [frame_input(frame), at]


def assert_bits_equal(response, want) -> None:
    assert int(response.as_numpy("K")[0, 0]) == want.k
    assert int(response.as_numpy("STEP")[0, 0]) == want.index
    assert np.array_equal(response.as_numpy("KEEP")[0], want.keep.numpy())
    for name in ("boxes", "scores", "labels"):
        served = response.as_numpy(name.upper())[0]
        assert np.array_equal(served, getattr(want.detections, name).numpy()), name


def concurrent_sequences(server, videos, count: int, frames: int, first_id: int) -> dict:
    """`count` sequences at once, sequence i over `videos[i % len(videos)][:frames]`, one
    gRPC client thread each. Every START is sent at once and answered before any sequence
    goes on, so the admitted are the first `max_streams`. Returns per sequence its
    responses, or the error that ended it."""
    gate, started = threading.Barrier(count), threading.Barrier(count)
    out: dict[int, list | Exception] = {}

    def run(i: int) -> None:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        video = videos[i % len(videos)][:frames]
        responses: list = []
        try:
            for t, frame in enumerate(video):
                if t < 2:  # all STARTs together, then all second frames
                    (gate if t == 0 else started).wait()
                responses.append(
                    client.infer(
                        server.model,
                        indexed(frame, t),
                        sequence_id=first_id + i,
                        sequence_start=t == 0,
                        sequence_end=t == len(video) - 1,
                    )
                )
        except InferenceServerException as e:
            out[i] = e
            if not responses:  # refused at START: let the others go on
                started.wait()
            return
        out[i] = responses

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_as_many_sequences_as_streams_none_dropped_each_equal_in_process(
    tiny_server, tiny_videos, tiny_want
) -> None:
    out = concurrent_sequences(tiny_server, tiny_videos, 16, LOAD_FRAMES, first_id=1000)
    dropped = {i: r for i, r in out.items() if isinstance(r, Exception)}
    assert not dropped, dropped
    for i, responses in out.items():
        assert len(responses) == LOAD_FRAMES
        for response, want in zip(responses, tiny_want[i % len(tiny_videos)], strict=True):
            assert_bits_equal(response, want)
        assert int(responses[0].as_numpy("STREAMS")[0, 0]) <= TINY.max_streams
    assert served_streams(tiny_server) == 0  # every sequence ended


def test_starts_beyond_the_streams_are_refused_at_start(tiny_server, tiny_videos, tiny_want):
    frames = 6
    out = concurrent_sequences(tiny_server, tiny_videos, 32, frames, first_id=2000)
    refused = {i: r for i, r in out.items() if isinstance(r, Exception)}
    assert len(refused) == 16
    for error in refused.values():
        assert error.status() == "StatusCode.UNAVAILABLE"
        assert "cannot start: 16 streams are open, the most this model holds" in str(error)
    for i, responses in out.items():
        if i not in refused:  # every admitted sequence completes, as in process
            for response, want in zip(responses, tiny_want[i % len(tiny_videos)], strict=False):
                assert_bits_equal(response, want)
            assert len(responses) == frames
    assert served_streams(tiny_server) == 0


def test_a_frame_resent_after_a_client_deadline_steps_once(tiny_server) -> None:
    """Large frames (their resize alone outlasts a 0.01 s deadline) through `SequenceClient`:
    the frame whose client gave up is sent again with its index (and with START, should
    Triton have dropped the sequence meanwhile); every frame steps once, each response and
    every later one equals the stream in process."""
    video = list(moving_frames(8, 1600, seed=7, speed=40.0))
    stream = Pipeline.load(tiny_server.package, backend=TINY.backend).new_stream(
        TINY.stream_options()
    )
    want = [stream.step(f) for f in video]
    grpc = grpcclient.InferenceServerClient(tiny_server.grpc_url)
    client = SequenceClient(grpc, tiny_server.model, 3000, attempts=1)
    steps = metric(tiny_server, "rgtp_k_count")
    responses = [client.send(video[0]), client.send(video[1])]
    with pytest.raises(InferenceServerException, match="Deadline Exceeded"):
        client.send(video[2], timeout_s=0.01)
    client.attempts = 3  # frame 2 again: the stored response if it stepped, else its step
    responses += [client.send(f) for f in video[2:]]
    for response, result in zip(responses, want, strict=True):
        assert_bits_equal(response, result)
    assert metric(tiny_server, "rgtp_k_count") == steps + 8  # each frame stepped once
    with pytest.raises(InferenceServerException, match=r"expects frame 8 \(FRAME_INDEX 8\)"):
        # with START: refused the same whether or not Triton still holds the sequence
        grpc.infer(tiny_server.model, indexed(video[5], 5), sequence_id=3000, sequence_start=True)
    assert_bits_equal(client.close(), want[-1])  # the last frame again closes the sequence
    assert served_streams(tiny_server) == 0


def test_a_sequence_triton_dropped_resumes_where_it_was(tiny_server) -> None:
    """Triton drops a sequence whose queued request is cancelled, and never tells the model:
    frame 2, sent while a large frame 1 runs, is cancelled while it waits in Triton's queue;
    Triton then refuses frame 2 ("must specify the START flag"), and frame 2 sent with START
    and its index resumes the model's stream: every frame equals the stream in process."""
    video = list(moving_frames(6, 224, seed=3, speed=10.0))
    video[1] = np.ascontiguousarray(video[1].repeat(12, axis=0).repeat(12, axis=1))  # 2688 px
    stream = Pipeline.load(tiny_server.package, backend=TINY.backend).new_stream(
        TINY.stream_options()
    )
    want = [stream.step(f) for f in video]
    grpc = grpcclient.InferenceServerClient(tiny_server.grpc_url)

    def send(cid: int, t: int, start: bool = False, **kw):
        return grpc.infer(
            tiny_server.model, indexed(video[t], t), sequence_id=cid, sequence_start=start, **kw
        )

    # until the cancel lands while frame 2 waits; a loaded machine moves frame 1's 21 MB
    # more slowly, and frame 2 sent before frame 1 arrived only wastes a try
    for cid, transfer_s in zip(range(3100, 3105), (0.05, 0.1, 0.15, 0.2, 0.3), strict=True):
        first = send(cid, 0, start=True)
        answered: dict = {}
        grpc.async_infer(
            tiny_server.model,
            indexed(video[1], 1),
            lambda result, error, into=answered: into.update(result=result, error=error),
            sequence_id=cid,
        )
        time.sleep(transfer_s)  # frame 1 reached the model
        queued = grpc.async_infer(
            tiny_server.model, indexed(video[2], 2), lambda **_: None, sequence_id=cid
        )
        deadline = time.monotonic() + 5
        while not answered and time.monotonic() < deadline:
            if metric(tiny_server, "nv_inference_pending_request_count") >= 1:
                break  # frame 2 waits behind frame 1
        queued.cancel()
        while not answered and time.monotonic() < deadline:
            time.sleep(0.01)
        assert answered.get("error") is None, answered
        try:
            send(cid, 2)
        except InferenceServerException as e:
            assert "must specify the START flag" in str(e)
            break
        send(cid, 2, sequence_end=True)  # frame 2 ran after all: close this one, try another
    else:
        pytest.fail("Triton ran every cancelled frame 2: no sequence was dropped")
    responses = [first, answered["result"], send(cid, 2, start=True)]
    responses += [send(cid, t) for t in range(3, len(video))]
    for response, result in zip(responses, want, strict=True):
        assert_bits_equal(response, result)
    send(cid, len(video) - 1, sequence_end=True)
    assert served_streams(tiny_server) == 0


def test_a_classifier_serves_class_scores_as_in_process(exported_package, tmp_path) -> None:
    """test_vivit_pruned's classifier package (a tiny ViViT at 96 px, a stage per block, K =
    14; exported once per run) served: three sequences interleaved frame by frame equal their
    streams in process; a frame that only fills a tubelet is STEP -1."""
    package = exported_package(random_vivit(), VIVIT_PLAN)
    keep = VIVIT_PLAN.buckets[0]  # its pruned bucket (the other is N)
    settings = ServingSettings(keep=keep, max_streams=3)
    model = write_repository(package, tmp_path / "repo", settings)
    size = VIVIT_PLAN.config.spatial.img_size
    clips = [list(moving_frames(20, size, seed=s, speed=3.0)) for s in range(3)]
    pipe = Pipeline.load(package, backend=settings.backend)
    streams = [pipe.new_stream(settings.stream_options()) for _ in clips]
    want = [[s.step(f) for f in c] for s, c in zip(streams, clips, strict=True)]
    scored = 0
    with TritonServer(model.parent, stop_timeout_s=STOP_S) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        for t in range(len(clips[0])):
            for i in (1, 0, 2):
                response = client.infer(
                    model.name,
                    indexed(clips[i][t], t),
                    sequence_id=50 + i,
                    sequence_start=t == 0,
                    sequence_end=t == len(clips[i]) - 1,
                )
                result = want[i][t]
                if result is None:
                    assert int(response.as_numpy("STEP")[0, 0]) == -1
                    assert response.as_numpy("CLASS_SCORES").shape == (1, 0)
                    continue
                assert int(response.as_numpy("STEP")[0, 0]) == result.index
                assert np.array_equal(response.as_numpy("KEEP")[0], result.keep.numpy())
                if result.scores is not None:
                    scores = response.as_numpy("CLASS_SCORES")[0]
                    assert np.array_equal(scores, result.scores.numpy())
                    scored += 1
    assert scored >= 3
