"""The analytic FLOPs counter against the paper's published figures, and its executed
convention against what the stages run."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from rgtp.families import get_config
from rgtp.families.detection.flops import frame_macs, schedule_macs
from tests.conftest import tiny_config


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


def test_executed_convention_equals_the_paper_on_dense_frames() -> None:
    """A dense frame runs every window whole (rel-pos included, padding slots too), as the
    paper counts: also on a padded grid (64 tokens in 14-token windows at 1024 px)."""
    for size in (672, 1024):
        cfg = get_config("vitdet-b", size).backbone
        assert frame_macs(cfg, None, convention="executed") == frame_macs(cfg, None)


@pytest.mark.parametrize("k", [1, 64, 195, 196, 512, 1763])
def test_executed_windowed_rows_grow_with_k(k: int) -> None:
    """Pruned windowed blocks run their kept queries in tiles (`stages.window_tiles`): fewer
    rows than the paper's whole windows until K nearly fills them; token-wise layers alike."""
    cfg = get_config("vitdet-b", 672).backbone
    paper, executed = frame_macs(cfg, k), frame_macs(cfg, k, convention="executed")
    assert executed.token_wise == paper.token_wise
    assert (executed.attention < paper.attention) == (k <= 512)
    assert (executed.backbone < paper.backbone) == (k <= 512)
    assert executed.backbone <= paper.backbone


def test_executed_convention_by_hand_on_a_tiny_config() -> None:
    """The tiny detector: 14 x 14 tokens of width 96, 6 x 6 windows (grid padded to 18 x 18,
    nW = 9), blocks 2 and 5 global, the other 4 windowed. Tiles of r = min(w², max(24,
    ⌈q/nW⌉)) rows (w² from q >= nW·w²/2 on), T = min(nW·⌈w²/r⌉, ⌊(q + nW·(r - 1))/r⌋) of
    them for q queries."""
    cfg = tiny_config().backbone
    k = 24  # r = 24, T = min(18, 231 // 24 = 9)
    m = frame_macs(cfg, k, convention="executed")
    assert m.attention == 2 * (2 * 24 * 196 * 96) + 4 * (2 * 9 * 24 * 36 * 96)
    assert m.rel_pos == 2 * (2 * 24 * 96 * 27) + 4 * (2 * 9 * 24 * 96 * 11)
    k = 49  # r = 24, T = min(18, 256 // 24 = 10): 240 rows where whole windows are 324
    m = frame_macs(cfg, k, convention="executed")
    assert m.attention == 2 * (2 * 49 * 196 * 96) + 4 * (2 * 10 * 24 * 36 * 96)
    assert m.attention < frame_macs(cfg, k).attention
    # block 0 attending before pruning (the authors' point): its 196 queries are more than
    # half the 324 slots, so whole windows (r = 36, T = 9)
    m = frame_macs(cfg, 24, prune_from="block0-mlp", convention="executed")
    window = 2 * 9 * 24 * 36 * 96
    assert m.attention == 2 * (2 * 24 * 196 * 96) + 3 * window + 2 * 9 * 36 * 36 * 96


@pytest.mark.parametrize("k", [24, 36, 49, 196])
def test_executed_count_is_what_the_stage_runs(tiny_detector, monkeypatch, k: int) -> None:
    """The windowed attention's query rows x keys in the stage modules, recorded at the
    fused kernel, equal the executed convention's count."""
    from rgtp.models import stages
    from rgtp.package.plan import StagePlan

    cfg = tiny_detector.cfg.backbone
    seen: list[tuple[int, ...]] = []
    real = stages.attention_output

    def record(q, key, v, bias):
        seen.append((*q.shape[:-1], key.shape[-2], q.shape[-1]))
        return real(q, key, v, bias)

    monkeypatch.setattr(stages, "attention_output", record)
    (stage,) = stages.stage_modules(
        tiny_detector.backbone, StagePlan.create(tiny_detector.cfg, [], "whole")
    )
    n, c = cfg.num_tokens, cfg.embed_dim
    keep = torch.randperm(n)[:k].sort().values
    caches = [torch.randn(1, n, c) for _ in range(2 * cfg.depth)]
    with torch.no_grad():
        stage(torch.randn(1, k, c), keep[None], *caches)
    macs = sum(2 * math.prod(s) for s in seen)  # QKᵀ and AV: windows x heads x rows x keys x d
    m = frame_macs(cfg, k, convention="executed")
    assert macs == m.attention - 2 * (2 * k * n * c)  # less the two global blocks


@pytest.mark.parametrize("convention", ["paper", "executed"])
def test_cli_names_the_convention_of_every_table(convention: str) -> None:
    argv = [sys.executable, "-m", "rgtp", "flops", "--size", "672", "--keep", "64"]
    argv += ["--convention", convention]
    table = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    assert f"GFLOPs, {convention} convention" in table
    out = subprocess.run([*argv, "--json"], capture_output=True, text=True, check=True).stdout
    data = json.loads(out)
    cfg = get_config("vitdet-b", 672).backbone
    assert data["convention"] == convention
    pruned = frame_macs(cfg, 64, convention=convention).backbone / 1e9
    assert data["pruned"]["backbone_gmacs"] == pruned
