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


def test_k512_with_resets_every_8_matches_the_paper_figure() -> None:
    """The paper's 72.6 GFLOPs prune after block 0's attention; pruning at the input saves
    that attention's qkv and projection on the N - K pruned tokens of the 7 pruned frames
    of 8, 3 % of the figure (tests/test_paper_preset.py checks every published figure)."""
    cfg = get_config("vitdet-b", 672).backbone
    at_input = schedule_macs(cfg, 512, 8).backbone / 1e9
    after_block0 = schedule_macs(cfg, 512, 8, prune_from="block0-mlp").backbone / 1e9
    assert after_block0 == pytest.approx(72.6, rel=0.005)
    saved = 7 / 8 * (cfg.num_tokens - 512) * 4 * cfg.embed_dim**2 / 1e9
    assert at_input == pytest.approx(after_block0 - saved, rel=1e-12)
    assert 0.96 * 72.6 <= at_input <= 0.97 * 72.6


def test_pruned_cost_grows_with_k_and_equals_dense_at_n() -> None:
    cfg = get_config("vitdet-b", 672).backbone
    costs = [frame_macs(cfg, k).backbone for k in (64, 196, 384, 512, 768)]
    assert costs == sorted(costs)
    assert frame_macs(cfg, cfg.num_tokens).backbone == frame_macs(cfg).backbone
    # tracking dots each token's C channels with its (2r + 1)² candidates; dense frames
    # do not track
    n, c = cfg.num_tokens, cfg.embed_dim
    assert frame_macs(cfg, 64, radius=1).tracking == n * 9 * c
    assert frame_macs(cfg, 64, radius=2).tracking == n * 25 * c
    assert frame_macs(cfg).tracking == 0


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
    cfg = get_config("vitdet-b", 672).backbone
    assert data["average"]["backbone_gmacs"] == schedule_macs(cfg, 512, 8).backbone / 1e9
    assert data["dense"]["backbone_gmacs"] == frame_macs(cfg).backbone / 1e9
    assert abs(data["dense"]["backbone_gmacs"] - 174.5) / 174.5 <= 0.02
    average, dense = data["average"]["backbone_gmacs"], data["dense"]["backbone_gmacs"]
    assert data["average_over_dense"] == pytest.approx(average / dense, rel=1e-12)
