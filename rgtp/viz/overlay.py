"""Pictures of what the pruned loop did (the seed's Fig. 7): per frame, the detections with
pruned tokens dimmed beside the importance map that chose the kept tokens."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image, ImageDraw

from rgtp.runtime.stream import FrameResult

_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
            (145, 30, 180), (70, 240, 240), (240, 50, 230)]  # fmt: skip


def _token_mask(keep: torch.Tensor, grid: int) -> np.ndarray:
    mask = np.zeros(grid * grid, dtype=bool)
    mask[keep.numpy()] = True
    return mask.reshape(grid, grid)


def _upsample(grid_map: np.ndarray, h: int, w: int) -> np.ndarray:
    """(g, g) -> (h, w) by nearest neighbour, so token borders stay visible."""
    g = grid_map.shape[0]
    rows = np.minimum(np.arange(h) * g // h, g - 1)
    cols = np.minimum(np.arange(w) * g // w, g - 1)
    return grid_map[rows][:, cols]


def overlay(
    frame: np.ndarray,
    result: FrameResult,
    grid: int,
    class_names: Sequence[str] = (),
    score_threshold: float = 0.3,
) -> np.ndarray:
    """Side-by-side picture (H, 2W, 3) uint8.

    Left: the frame, pruned tokens dimmed, detections above `score_threshold` boxed.
    Right: the importance that chose this frame's tokens (ŝ, tracked from the previous
    frame; s_0 of this frame on reset frames), kept tokens outlined by brightness.
    """
    h, w = frame.shape[:2]
    kept = _upsample(_token_mask(result.keep, grid), h, w)
    left = frame.astype(np.float32)
    left[~kept] *= 0.35
    importance = result.tracked if result.tracked is not None else result.importance
    imp = importance.detach().cpu().float().numpy().reshape(grid, grid)
    imp = imp / max(float(imp.max()), 1e-12)
    heat = colormaps["inferno"](_upsample(imp, h, w))[..., :3] * 255
    heat[~kept] *= 0.5
    canvas = Image.fromarray(np.concatenate([left, heat], axis=1).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    dets = result.detections
    for box, score, label in zip(
        dets.boxes.tolist(), dets.scores.tolist(), dets.labels.tolist(), strict=True
    ):
        if score < score_threshold:
            continue
        color = _PALETTE[label % len(_PALETTE)]
        draw.rectangle(box, outline=color, width=2)
        name = class_names[label] if label < len(class_names) else str(label)
        draw.text((box[0] + 2, box[1] + 1), f"{name} {score:.2f}", fill=color)
    tag = "reset (dense)" if result.reset else f"K={result.k}/{grid * grid}"
    draw.text((4, 4), f"frame {result.index}  {tag}", fill=(255, 255, 255))
    draw.text((w + 4, 4), "importance", fill=(255, 255, 255))
    return np.asarray(canvas)


def overlays(
    frames: Iterable[np.ndarray],
    results: Iterable[FrameResult],
    grid: int,
    class_names: Sequence[str] = (),
) -> Iterator[np.ndarray]:
    for frame, result in zip(frames, results, strict=True):
        yield overlay(frame, result, grid, class_names)


def save_pngs(images: Iterable[np.ndarray], directory: str | Path) -> list[Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        path = directory / f"{i:05d}.png"
        Image.fromarray(img).save(path)
        paths.append(path)
    return paths
