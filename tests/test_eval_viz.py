"""Evaluation (pycocotools mAP50, GFLOPs averaging) and the pictures."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from rgtp.core.selection import FixedKeep
from rgtp.data.coco import sequences_to_coco
from rgtp.data.synthvid import CLASSES, SynthVIDConfig, generate_sequence
from rgtp.families.detection.detector import Detector
from rgtp.families.detection.flops import frame_macs
from rgtp.families.detection.tools.coco_map import map50
from rgtp.families.detection.tools.evaluate import (
    EvalSetting,
    evaluate_setting,
    heldout_split,
    radius_table,
    results_table,
)
from rgtp.runtime import Pipeline
from rgtp.runtime.video import read_frames, write_video
from rgtp.viz.overlay import overlay
from rgtp.viz.timeline import plot_timeline
from tests.conftest import randomize, small_detector, tiny_config


def gt_as_results(coco: dict, shift: float = 0.0) -> list[dict]:
    return [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": [a["bbox"][0] + shift, a["bbox"][1], a["bbox"][2], a["bbox"][3]],
            "score": 0.9,
        }
        for a in coco["annotations"]
    ]


def test_map50_of_ground_truth_is_one_and_drops_for_bad_boxes() -> None:
    seq = generate_sequence(7, SynthVIDConfig(size=128, num_frames=4))
    coco = sequences_to_coco([seq], CLASSES)
    assert map50(coco, gt_as_results(coco)) == 1.0
    assert map50(coco, gt_as_results(coco, shift=60.0)) < 0.5
    assert map50(coco, []) == 0.0


def synth_detector() -> Detector:
    cfg = tiny_config(img_size=128, window=4)
    cfg = dataclasses.replace(cfg, head=dataclasses.replace(cfg.head, num_classes=len(CLASSES)))
    torch.manual_seed(0)
    return randomize(Detector(cfg))


def test_evaluate_setting_records_cost_and_accuracy() -> None:
    det = synth_detector()
    n = det.cfg.backbone.num_tokens
    pipe = Pipeline.from_model(det, [n // 4])
    seqs = tuple(generate_sequence(s, SynthVIDConfig(size=128, num_frames=9)) for s in (1, 2))
    dense = evaluate_setting(pipe, EvalSetting(None), seqs, progress=False)
    pruned = evaluate_setting(pipe, EvalSetting(n // 4, reset_every=8), seqs, progress=False)
    assert dense.k == "N" and dense.gflops_ratio == 1.0 and dense.frames == 18
    # 2 of 9 frames per sequence are dense (0 and 8): the paper's average over all frames
    bb = det.cfg.backbone
    full, part = frame_macs(bb).backbone, frame_macs(bb, n // 4, 1).backbone
    assert pruned.gflops_ratio == pytest.approx((2 * full + 7 * part) / 9 / full, rel=1e-12)
    assert pruned.mean_k == (2 * n + 7 * (n // 4)) / 9
    assert dense.map50 == pruned.map50 == 0.0  # random weights find nothing
    assert 0 < pruned.ms_engine < pruned.ms_per_frame
    assert pruned.ms_outside_engine == pytest.approx(pruned.ms_per_frame - pruned.ms_engine)
    table = results_table([dense, pruned], "tiny")
    assert "| dense |" in table and f"K={n // 4}" in table
    assert "r = 1" in radius_table([pruned])


def test_the_shipped_model_keeps_its_accuracy_when_pruned() -> None:
    """2 held-out sequences x 16 frames on the shipped vitdet-small (PyTorch): the dense model
    scores mAP50 0.997 here, K = N is the dense run exactly, and K = 77 (30 % of the tokens,
    43 % of the GFLOPs with resets) loses less than a point."""
    pipe = Pipeline.from_model(small_detector(), [77])
    seqs = heldout_split(2, 16, 1, 256)
    dense, full, pruned = (
        evaluate_setting(pipe, EvalSetting(k), seqs, progress=False) for k in (None, 256, 77)
    )
    assert dense.map50 == pytest.approx(0.9975, abs=2e-3)
    assert full.map50 == dense.map50 and full.mean_k == 256
    assert abs(pruned.map50 - dense.map50) <= 0.01
    assert pruned.mean_k == (2 * 256 + 14 * 77) / 16


def test_overlay_video_and_timeline(tmp_path) -> None:
    det = synth_detector()
    n = det.cfg.backbone.num_tokens
    pipe = Pipeline.from_model(det, [n // 4])
    seq = generate_sequence(3, SynthVIDConfig(size=128, num_frames=5))
    stream = pipe.new_stream(policy=FixedKeep(n // 4))
    results = [stream.step(f) for f in seq.frames]
    pictures = [
        overlay(f, r, det.cfg.backbone.grid, CLASSES)
        for f, r in zip(seq.frames, results, strict=True)
    ]
    assert pictures[0].shape == (128, 256, 3) and pictures[0].dtype == np.uint8
    # pruned tokens are dimmed on the left half: a pruned frame is darker than its input
    assert pictures[1][:, :128].mean() < seq.frames[1].mean()
    assert write_video(tmp_path / "v.mp4", pictures, fps=5) == 5
    assert len(list(read_frames(tmp_path / "v.mp4"))) == 5
    png = plot_timeline({"pruned": results}, tmp_path / "t.png")
    assert png.stat().st_size > 10_000
