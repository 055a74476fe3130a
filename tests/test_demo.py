"""The README's main job, in a cheap form: the demo end to end on the shipped model."""

from __future__ import annotations

import json

import pytest

from rgtp.models.registry import shipped_weights
from rgtp.runtime.video import read_frames


@pytest.mark.slow
@pytest.mark.skipif(shipped_weights("vitdet-small") is None, reason="no shipped weights")
def test_demo_writes_video_plot_and_table(tmp_path) -> None:
    from rgtp.demo import run_demo

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
