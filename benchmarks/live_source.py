"""A live source faster than the run: SynthVID frames sent at a fixed rate (real-time pacing)
through a named pipe into `rgtp run --live`, which drops what it falls behind on.

Prints the run's report (frames read, dropped, waiting at most) and writes it as JSON:

    python benchmarks/live_source.py PACKAGE --keep 77 --fps 25 --frames 480 \
        --json benchmarks/results/live-source-vitdet-small-2026-12-07.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from rgtp.data.synthvid import SynthVIDConfig, generate_sequence, heldout_seeds


def clip(frames: int) -> list[np.ndarray]:
    """`frames` frames (192, 256, 3) of a held-out SynthVID sequence of 48, looped; the rows
    cut so the run letterboxes them."""
    seq = generate_sequence(heldout_seeds(3)[2], SynthVIDConfig(num_frames=48))
    return [seq.frames[i % 48][32:224] for i in range(frames)]


def feed(path: Path, frames: list[np.ndarray], fps: float) -> threading.Thread:
    """A thread sending `frames` into the named pipe `path` as NUT raw video at `fps`, paced
    from the moment the reader takes the first one (the run has loaded by then)."""
    # read-write: the open returns at once (FFmpeg's blocking open would hold the GIL)
    pipe = open(os.open(path, os.O_RDWR), "wb", buffering=0)  # noqa: SIM115 (closed below)

    def write() -> None:
        with pipe, av.open(pipe, mode="w", format="nut") as container:
            stream = container.add_stream("rawvideo", rate=Fraction(fps).limit_denominator(1001))
            stream.height, stream.width = frames[0].shape[:2]
            stream.pix_fmt = "rgb24"
            start = None
            for i, frame in enumerate(frames):
                if i == 1:
                    start = time.perf_counter() - 1 / fps
                if start is not None:
                    time.sleep(max(0.0, start + i / fps - time.perf_counter()))
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode(None))

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("package")
    p.add_argument("--keep", default="77")
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--frames", type=int, default=480)
    p.add_argument("--live-queue", default="1")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fifo = Path(tmp) / "camera"
        os.mkfifo(fifo)
        writer = feed(fifo, clip(args.frames), args.fps)
        cmd = [sys.executable, "-m", "rgtp", "run", args.package, "--video", str(fifo), "--live"]
        cmd += ["--live-queue", args.live_queue, "--keep", args.keep, "--out", f"{tmp}/run"]
        start = time.perf_counter()
        done = subprocess.run([*cmd, "--quiet"], capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr}")
        seconds = time.perf_counter() - start
        writer.join(10)
        ran = len(json.loads((Path(tmp) / "run" / "frames.json").read_text()))
    print(done.stdout)
    live = re.search(
        r"live source: (\d+) frames read, (\d+) dropped .* at most (\d+) of", done.stdout
    )
    assert live, done.stdout
    figures = {
        "package": args.package,
        "keep": args.keep,
        "source_fps": args.fps,
        "live_queue": int(args.live_queue),
        "frames_sent": args.frames,
        "frames_read": int(live[1]),
        "frames_dropped": int(live[2]),
        "frames_run": ran,
        "most_waiting": int(live[3]),
        "wall_s": round(seconds, 1),
        "load_average": os.getloadavg()[0],
    }
    print(json.dumps(figures))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
