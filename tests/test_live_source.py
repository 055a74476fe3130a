"""Live sources: when the pipeline is slower than the source, frames are dropped (the
oldest waiting first) and counted, and no more than the queue's bound ever wait; a named
pipe fed through PyAV by a writer thread runs through `rgtp run --live`."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from rgtp.cli import main
from rgtp.export.package import export_package
from rgtp.package.plan import StagePlan
from rgtp.runtime.live import DropOldestQueue, LiveFrames, open_live
from rgtp.runtime.stream import Stream
from rgtp.runtime.video import VideoError


def numbered(i: int, h: int = 48, w: int = 64) -> np.ndarray:
    """Frame i (H, W, 3) uint8: its number in every pixel, read back by `number`."""
    return np.full((h, w, 3), i, np.uint8)


def number(frame: np.ndarray) -> int:
    return int(frame[0, 0, 0])


def test_a_consumer_that_falls_behind_gets_the_newest_frames_and_the_rest_are_dropped() -> None:
    n, bound = 100, 3
    waiting: list[int] = []  # frames waiting each time the source sends one
    taken, done = threading.Event(), threading.Event()

    def source() -> Iterator[np.ndarray]:
        for i in range(n):
            waiting.append(live.waiting)
            yield numbered(i)
            if i == 0:
                assert taken.wait(10)
        done.set()

    live = LiveFrames(source(), max_queue=bound)
    frames = iter(live)
    got = [number(next(frames))]  # starts the reader
    taken.set()
    # the pipeline stalls while the source sends every frame: the slow consumer, made certain
    assert done.wait(10)
    got += [number(f) for f in frames]
    c = live.counts
    assert max(waiting) <= bound and c.high_water == bound  # filled, never past its bound
    assert got == [0, *range(n - bound, n)]  # after the stall: the newest `bound`, in order
    assert c.read == n and c.delivered == len(got) and c.dropped == n - len(got)


def test_a_queue_of_one_hands_over_the_newest_frame() -> None:
    q = DropOldestQueue(1)
    for i in range(5):
        q.put(i)
    q.close()
    assert q.get() == 4 and q.counts.dropped == 4 and q.counts.high_water == 1
    with pytest.raises(StopIteration):
        q.get()
    with pytest.raises(ValueError, match="max_queue must be an integer >= 1"):
        DropOldestQueue(0)


def test_the_source_error_comes_after_the_frames_read_before_it() -> None:
    def source() -> Iterator[np.ndarray]:
        yield numbered(0)
        raise VideoError("camera unplugged")

    live = LiveFrames(source(), max_queue=4)
    frames = iter(live)
    assert number(next(frames)) == 0
    with pytest.raises(VideoError, match="camera unplugged"):
        next(frames)


def test_a_live_source_that_cannot_be_opened_is_named(tmp_path) -> None:
    with pytest.raises(VideoError, match=r"nothing\.sock: cannot open the live source"):
        open_live(f"unix://{tmp_path / 'nothing.sock'}", timeout=1.0)


def feed(path: Path, count: int, h: int = 48, w: int = 64) -> threading.Thread:
    """A writer thread sending `count` numbered frames into the named pipe `path` as fast as
    it can, as NUT-wrapped raw video (what a camera's FFmpeg relay could send)."""

    # Opened read-write, the pipe opens at once: FFmpeg's blocking open of a pipe's writing
    # end would hold the GIL until a reader came, and the reader is this process.
    pipe = open(os.open(path, os.O_RDWR), "wb", buffering=0)  # noqa: SIM115 (closed below)

    def write() -> None:
        with pipe, av.open(pipe, mode="w", format="nut") as container:
            stream = container.add_stream("rawvideo", rate=Fraction(25))
            stream.width, stream.height, stream.pix_fmt = w, h, "rgb24"
            for i in range(count):
                frame = av.VideoFrame.from_ndarray(numbered(4 * i, h, w), format="rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def test_a_named_pipe_through_the_reader_drops_what_the_consumer_misses(tmp_path) -> None:
    fifo = tmp_path / "camera"
    os.mkfifo(fifo)
    writer = feed(fifo, 40)
    live = open_live(str(fifo), max_queue=2)  # opens once the writer does
    frames = iter(live)
    got = [number(next(frames)) // 4]
    writer.join(10)  # the stall: the source sends everything meanwhile
    got += [number(f) // 4 for f in frames]
    c = live.counts
    assert c.read == 40 and c.high_water == 2 and c.dropped == 40 - len(got) > 0
    assert got[-2:] == [38, 39] and got == sorted(set(got))


def test_rgtp_run_live_counts_the_frames_it_dropped(
    tiny_detector, quick_export, monkeypatch, tmp_path, capsys
) -> None:
    from rgtp.export import package as package_module
    from tests.conftest import one_node_graph

    # stand-in graphs also where fixed-K graphs come from the symbolic one: the torch
    # engines read the weights only
    monkeypatch.setattr(
        package_module, "fix_k", lambda g, spec: one_node_graph(None, spec, None), raising=False
    )
    pkg = tmp_path / "pkg"
    plan = StagePlan.create(tiny_detector.cfg, [20])
    export_package(tiny_detector, plan, pkg, symbolic=False, progress=False)
    fifo = tmp_path / "camera"
    os.mkfifo(fifo)
    writer = feed(fifo, 30, 96, 128)
    # The pipeline's first step stalls until the source has sent all 30 frames (a pipe holds
    # under two of them): at least 26 arrive while it stalls, and all but two are dropped.
    step = Stream.step

    def stalled(self, frame):
        writer.join(10)
        return step(self, frame)

    monkeypatch.setattr(Stream, "step", stalled)
    out = tmp_path / "run"
    args = ["run", str(pkg), "--video", str(fifo), "--live", "--live-queue", "2"]
    assert main([*args, "--backend", "torch", "--out", str(out), "--quiet"]) == 0
    said = capsys.readouterr().out
    line = next(s for s in said.splitlines() if s.startswith("live source:"))
    ran = len(json.loads((out / "detections.json").read_text()))
    assert line == f"live source: 30 frames read, {30 - ran} dropped (the run fell behind), " + (
        "at most 2 of 2 waiting"
    )
    assert 3 <= ran <= 5


def test_live_without_a_video_is_a_usage_error(tmp_path, capsys) -> None:
    args = ["run", str(tmp_path / "pkg"), "--synthetic", "2", "--live", "--out", str(tmp_path)]
    assert main(args) == 2
    assert "--live reads --video" in capsys.readouterr().err
