"""Ground truth of video sequences as COCO-format annotations (what pycocotools evaluates)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rgtp.data.synthvid import Sequence as VideoSequence


def sequences_to_coco(
    sequences: Iterable[VideoSequence], class_names: Sequence[str]
) -> dict[str, Any]:
    """COCO dict with images, annotations, categories (and videos) for the sequences.

    Image ids count from 1 over sequences in the given order, frames in frame order, so a
    detection file can refer to them without a lookup. Boxes become COCO [x, y, w, h] in
    pixels; category ids are the 0-based labels + 1; track ids are kept per video.
    """
    videos, images, annotations = [], [], []
    for video_id, seq in enumerate(sequences, start=1):
        videos.append({"id": video_id, "name": f"seq{seq.seed}"})
        height, width = seq.frames.shape[1:3]
        for t, (boxes, labels, track_ids) in enumerate(
            zip(seq.boxes, seq.labels, seq.track_ids, strict=True)
        ):
            image_id = len(images) + 1
            images.append(
                {
                    "id": image_id,
                    "file_name": f"seq{seq.seed}/{t:06d}.jpg",
                    "width": int(width),
                    "height": int(height),
                    "video_id": video_id,
                    "frame_index": t,
                }
            )
            for (x1, y1, x2, y2), label, track_id in zip(boxes, labels, track_ids, strict=True):
                w, h = float(x2 - x1), float(y2 - y1)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": int(label) + 1,
                        "bbox": [float(x1), float(y1), w, h],
                        "area": w * h,
                        "iscrowd": 0,
                        "track_id": int(track_id),
                    }
                )
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(class_names)]
    return {
        "videos": videos,
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def write_coco(path: str | Path, coco: dict[str, Any]) -> None:
    """Write a COCO dict as JSON, creating parent directories."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(coco))


def load_coco(path: str | Path) -> dict[str, Any]:
    """Read a COCO JSON file back into a dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no COCO annotation file at {path}")
    return json.loads(path.read_text())
