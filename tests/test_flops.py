"""The analytic FLOPs counter against the paper's published figures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rgtp.models import get_config
from rgtp.models.flops import frame_macs, schedule_macs


@pytest.mark.parametrize(("size", "paper"), [(672, 174.5), (1024, 467.4)])
def test_dense_vitdet_b_matches_the_paper(size: int, paper: float) -> None:
    g = frame_macs(get_config("vitdet-b", size).backbone).backbone / 1e9
    assert abs(g - paper) / paper <= 0.02, g


def test_k512_with_resets_every_8_is_within_the_paper_figure() -> None:
    g = schedule_macs(get_config("vitdet-b", 672).backbone, 512, 8).backbone / 1e9
    assert g <= 72.6, g


def test_pruned_cost_grows_with_k_and_equals_dense_at_n() -> None:
    cfg = get_config("vitdet-b", 672).backbone
    costs = [frame_macs(cfg, k).backbone for k in (64, 196, 384, 512, 768)]
    assert costs == sorted(costs)
    assert frame_macs(cfg, cfg.num_tokens).backbone == frame_macs(cfg).backbone
    assert frame_macs(cfg, 64).tracking > 0 and frame_macs(cfg).tracking == 0


def test_cli_prints_and_writes_json() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "rgtp",
            "flops",
            "--model",
            "vitdet-b",
            "--size",
            "672",
            "--keep",
            "512",
            "--reset-every",
            "8",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    data = json.loads(out)
    assert data["average"]["backbone_gmacs"] <= 72.6
    assert abs(data["dense"]["backbone_gmacs"] - 174.5) / 174.5 <= 0.02
