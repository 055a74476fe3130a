"""`rgtp run --video SRC --overlay`: the pictures `rgtp demo` writes (overlay video, PNG
frames, timeline), for a video of one's own, through the demo's own writer, for a detector
and a classifier. Packages come from `quick_export` (stand-in graphs) and run on the torch
engines, which read only the package's weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rgtp.cli import main
from rgtp.core.selection import FixedKeep
from rgtp.export.package import export_package
from rgtp.families.classification.vivit import ViViT
from rgtp.package.plan import StagePlan
from rgtp.runtime import Pipeline
from rgtp.runtime.video import read_frames, write_video
from tests.conftest import moving_frames, randomize
from tests.test_viz_classifier import CFG as VIVIT_CFG

H, W = 96, 128  # not square: the model input (224, grid 14) letterboxes the frame
FRAMES, K = 11, 20


@pytest.fixture
def stand_ins(quick_export, monkeypatch) -> None:
    """`quick_export`, also where a stage's fixed-K graphs are derived from its symbolic one
    (`fix_k`): no graph is traced; the torch engines read the weights only."""
    from rgtp.export import package as package_module
    from tests.conftest import one_node_graph

    def stand_in(graph, spec):
        return one_node_graph(None, spec, None)

    monkeypatch.setattr(package_module, "fix_k", stand_in, raising=False)


@pytest.fixture
def video(tmp_path) -> tuple[Path, list[np.ndarray]]:
    """An 11-frame MP4 of 96 x 128 frames, and the frames as decoded (what the run sees)."""
    path = tmp_path / "clip.mp4"
    write_video(path, (f[:H] for f in moving_frames(FRAMES, W, speed=4.0)), fps=12)
    return path, list(read_frames(path))


def letterboxed_tokens(keep: torch.Tensor, grid: int, h: int, w: int) -> np.ndarray:
    """(h, w) bool: the frame pixels whose model-input token is kept, the frame's longer side
    scaled to the model input (`grid` tokens) and the rest padded (rounding as to_model_input
    does; the grid is the tokens of a square of side max(h, w))."""
    mask = np.zeros(grid * grid, dtype=bool)
    mask[keep.numpy()] = True
    side = max(h, w)
    rows, cols = np.arange(h) * grid // side, np.arange(w) * grid // side
    return mask.reshape(grid, grid)[rows][:, cols]


def test_run_overlay_writes_the_demo_pictures_for_a_detector(
    tiny_detector, stand_ins, video, tmp_path, capsys
) -> None:
    pkg = tmp_path / "pkg"
    export_package(
        tiny_detector, StagePlan.create(tiny_detector.cfg, [K]), pkg, symbolic=False, progress=False
    )
    path, frames = video
    out = tmp_path / "run"
    args = ["run", str(pkg), "--video", str(path), "--backend", "torch", "--keep", str(K)]
    assert main([*args, "--out", str(out), "--overlay", "--quiet"]) == 0
    said = capsys.readouterr().out
    assert f"overlay: {FRAMES} pictures, 2 of them as PNG" in said
    assert f"{out / 'overlay.mp4'}, {out / 'overlay_frames'}, {out / 'timeline.png'}" in said

    pictures = list(read_frames(out / "overlay.mp4"))
    assert len(pictures) == FRAMES and pictures[0].shape == (H, 2 * W, 3)
    pngs = sorted((out / "overlay_frames").glob("*.png"))
    assert [p.name for p in pngs] == ["00000.png", "00001.png"]  # pictures 0 and 10
    assert Image.open(out / "timeline.png").size == (990, 605)
    assert len(json.loads((out / "detections.json").read_text())) == FRAMES

    # The picture of frame 10 (the second PNG, a pruned frame) against the frame and the
    # step's kept tokens: kept tokens show the frame as it is, pruned ones dimmed to 35 %,
    # where the letterbox puts them. The tag's text and drawn boxes are left out.
    stream = Pipeline.load(pkg, "torch").new_stream(policy=FixedKeep(K))
    results = [stream.step(f) for f in frames]
    picture = np.asarray(Image.open(pngs[1]))
    left, frame = picture[:, :W].astype(int), frames[10].astype(int)
    kept = letterboxed_tokens(results[10].keep, 14, H, W)
    plain = np.ones((H, W), dtype=bool)
    plain[:32, :64] = False  # the tag: "frame 10", "K=20/196"
    for box in results[10].detections.boxes[results[10].detections.scores >= 0.3].tolist():
        x0, y0, x1, y1 = (int(v) for v in box)
        plain[max(y0 - 2, 0) : y1 + 3, max(x0 - 2, 0) : x1 + 3] = False
    assert 0 < (kept & plain).sum() < plain.sum()  # both kinds of tokens are on the frame
    assert (left[kept & plain] == frame[kept & plain]).all()
    dimmed = (frame[~kept & plain] * 0.35).astype(int)
    assert (np.abs(left[~kept & plain] - dimmed) <= 1).all()
    assert (picture != np.concatenate([frames[10], frames[10]], axis=1)).any(axis=-1).mean() > 0.5


def test_run_overlay_captions_a_classifier_time_step(stand_ins, tmp_path, capsys) -> None:
    torch.manual_seed(0)
    model = randomize(ViViT(VIVIT_CFG))
    pkg = tmp_path / "pkg"
    export_package(model, StagePlan.create(VIVIT_CFG, [14]), pkg, symbolic=False, progress=False)
    path = tmp_path / "clip.mp4"
    write_video(path, moving_frames(22, 96, seed=3, speed=4.0), fps=12)
    out = tmp_path / "run"
    args = ["run", str(pkg), "--video", str(path), "--backend", "torch", "--keep", "14"]
    assert main([*args, "--out", str(out), "--overlay", "--quiet"]) == 0
    assert "overlay: 11 pictures, 2 of them" in capsys.readouterr().out  # one a time step
    pictures = list(read_frames(out / "overlay.mp4"))
    assert len(pictures) == 11 and pictures[0].shape == (96, 192, 3)
    # the caption strip: "—" before the first full clip (8 steps), then the top class
    classes = json.loads((out / "classes.json").read_text())
    assert [c["top"] is None for c in classes] == [True] * 7 + [False] * 4
    first, last = (np.asarray(Image.open(p)) for p in sorted((out / "overlay_frames").iterdir()))
    strip = slice(96 - 19, 96)
    assert (first[strip, :40] != last[strip, :40]).any()
