"""Pictures of what the pruned loop did (the seed's Fig. 7): per step, the frame with pruned
tokens dimmed and the step's prediction (a detector's boxes, a classifier's top class) beside
the importance map that chose the kept tokens."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from rgtp.package.family import StepResult
from rgtp.viz import describe

_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
            (145, 30, 180), (70, 240, 240), (240, 50, 230)]  # fmt: skip
_WHITE = (255, 255, 255)
# matplotlib's DejaVu Sans (installed with matplotlib): Pillow's own font lacks glyphs such as
# the "—" of a classifier before its first full clip.
_FONT = ImageFont.truetype(str(Path(matplotlib.get_data_path(), "fonts/ttf/DejaVuSans.ttf")), 11)


def _color(index: int | None) -> tuple[int, int, int]:
    """A class's colour; white for None (no class)."""
    return _WHITE if index is None else _PALETTE[index % len(_PALETTE)]


def _token_mask(keep: torch.Tensor, grid: int) -> np.ndarray:
    mask = np.zeros(grid * grid, dtype=bool)
    mask[keep.numpy()] = True
    return mask.reshape(grid, grid)


def _upsample(grid_map: np.ndarray, h: int, w: int, resize: str = "stretch") -> np.ndarray:
    """(g, g) -> (h, w) by nearest neighbour, so token borders stay visible. With
    "letterbox" (the stream's resize policy) the grid spans a square of the frame's longer
    side from its top-left corner, as the model input does; the padding is cut off."""
    g = grid_map.shape[0]
    side_h, side_w = (max(h, w), max(h, w)) if resize == "letterbox" else (h, w)
    rows = np.minimum(np.arange(h) * g // side_h, g - 1)
    cols = np.minimum(np.arange(w) * g // side_w, g - 1)
    return grid_map[rows][:, cols]


def overlay(
    frame: np.ndarray,
    result: StepResult,
    grid: int,
    class_names: Sequence[str] = (),
    score_threshold: float = 0.3,
    resize: str = "letterbox",
) -> np.ndarray:
    """Side-by-side picture (H, 2W, 3) uint8 of a step and `frame` (H, W, 3), its input (for a
    classifier, the time step's last frame).

    Left: the frame, pruned tokens dimmed, and the prediction: a detector's boxes scoring at
    least `score_threshold` (labels named by `class_names`), or a classifier's top class and
    its probability over the clip, "—" before the first full clip (`rgtp.viz.describe`).
    Right: the importance that chose this step's tokens (ŝ, tracked from the previous step;
    s_0 of this step on reset steps), kept tokens outlined by brightness.
    `resize`: how the stream fitted the frame to the model input (its `resize` option), which
    says where the tokens lie on a frame that is not square.
    """
    h, w = frame.shape[:2]
    kept = _upsample(_token_mask(result.keep, grid), h, w, resize)
    left = frame.astype(np.float32)
    left[~kept] *= 0.35
    importance = result.tracked if result.tracked is not None else result.importance
    imp = importance.detach().cpu().float().numpy().reshape(grid, grid)
    imp = imp / max(float(imp.max()), 1e-12)
    heat = colormaps["inferno"](_upsample(imp, h, w, resize))[..., :3] * 255
    heat[~kept] *= 0.5
    canvas = Image.fromarray(np.concatenate([left, heat], axis=1).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    marks = describe(result, class_names, score_threshold)
    for box, text, color in marks.boxes:
        draw.rectangle(box, outline=_color(color), width=2)
        draw.text((box[0] + 2, box[1] + 1), text, fill=_color(color), font=_FONT)
    if marks.caption is not None:
        # on a dark strip: the class must read over any frame, dimmed or not
        at = (4, h - 16)
        right = draw.textbbox(at, marks.caption, font=_FONT)[2]
        draw.rectangle((0, h - 19, right + 4, h - 1), fill=(0, 0, 0))
        draw.text(at, marks.caption, fill=_color(marks.caption_color), font=_FONT)
    # two short lines: the tag must fit the left half of a small model-input frame
    tag = f"{marks.unit} {result.index}\nK={result.k}/{grid * grid}"
    tag += ", reset" if result.reset else ""
    draw.text((4, 4), tag, fill=_WHITE, font=_FONT)
    draw.text((w + 4, 4), "importance", fill=_WHITE, font=_FONT)
    return np.asarray(canvas)
