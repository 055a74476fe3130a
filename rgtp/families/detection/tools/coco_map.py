"""mAP with pycocotools over video frames."""

from __future__ import annotations

import contextlib
import io
from typing import Any

from rgtp._optional import require
from rgtp.families.detection.boxes import Detections

require("pycocotools", "eval", "mAP")  # before its submodules: a missing one names the extra
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402


def detections_to_coco(image_id: int, dets: Detections) -> list[dict[str, Any]]:
    """One frame's detections as COCO results (category ids are labels + 1)."""
    out = []
    for (x1, y1, x2, y2), score, label in zip(
        dets.boxes.tolist(), dets.scores.tolist(), dets.labels.tolist(), strict=True
    ):
        out.append(
            {
                "image_id": image_id,
                "category_id": int(label) + 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": float(score),
            }
        )
    return out


def map50(ground_truth: dict[str, Any], results: list[dict[str, Any]]) -> float:
    """COCO-style AP at IoU 0.5 (area-unrestricted, 100 detections per image), in [0, 1]."""
    if not results:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = ground_truth
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[1])
