"""The README's main job, in a cheap form: the demo end to end on the shipped model."""

from __future__ import annotations

import json

import pytest

from rgtp.families import shipped_weights
from rgtp.runtime.video import read_frames


@pytest.mark.skipif(shipped_weights("vitdet-small") is None, reason="no shipped weights")
def test_demo_writes_video_plot_and_table(tmp_path) -> None:
    from rgtp.families.detection.tools.demo import run_demo

    summary = run_demo(tmp_path, sequences=1, frames=10, progress=False)
    frames = list(read_frames(tmp_path / "pruned_overlay.mp4"))
    assert len(frames) == 10 and frames[0].shape[1] == 2 * frames[0].shape[0]
    assert (tmp_path / "timeline.png").stat().st_size > 10_000
    assert len(list((tmp_path / "frames").glob("*.png"))) == 2
    records = json.loads((tmp_path / "summary.json").read_text())["records"]
    dense, pruned = records
    assert dense["k"] == "N" and pruned["k"] == 77
    assert pruned["gflops"] < dense["gflops"]
    assert "| dense |" in (tmp_path / "summary.md").read_text()
    assert summary["records"] == records


@pytest.mark.skipif(shipped_weights("vivit-small") is None, reason="no shipped weights")
def test_classifier_demo_writes_video_plot_and_table(tmp_path) -> None:
    from rgtp.families.classification.tools.demo import run_demo

    summary = run_demo(tmp_path, clips=3, progress=False)
    frames = list(read_frames(tmp_path / "pruned_overlay.mp4"))
    assert len(frames) == 16 and frames[0].shape[1] == 2 * frames[0].shape[0]  # a step each
    assert (tmp_path / "timeline.png").stat().st_size > 10_000
    classes = json.loads((tmp_path / "pruned" / "classes.json").read_text())
    assert [c["top"] is not None for c in classes] == [False] * 7 + [True] * 9
    rows = summary["table"]
    assert [r["setting"] for r in rows][:2] == ["dense", "pruned K=26"]
    assert rows[1]["of_dense"] < 0.6
    assert all(c["dense"] and c["pruned"] for c in summary["clips_shown"])
