"""Top-K selection, K-bucket policies and the reset schedule."""

from __future__ import annotations

import pytest
import torch

from rgtp.core.selection import (
    FixedKeep,
    MassKeep,
    check_buckets,
    is_reset_frame,
    select_tokens,
    top_k,
)


def test_top_k_returns_sorted_indices_of_the_largest() -> None:
    scores = torch.tensor([0.1, 0.9, 0.3, 0.8, 0.05])
    assert top_k(scores, 2).tolist() == [1, 3]
    assert top_k(scores, 5).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        top_k(scores, 6)


def test_top_k_breaks_ties_towards_lower_index() -> None:
    scores = torch.tensor([0.5, 0.2, 0.5, 0.5, 0.2])
    assert top_k(scores, 2).tolist() == [0, 2]
    assert top_k(scores, 4).tolist() == [0, 1, 2, 3]


def test_buckets_always_include_n_and_are_validated() -> None:
    assert check_buckets([64, 16, 64], 100) == (16, 64, 100)
    with pytest.raises(ValueError, match="outside"):
        check_buckets([0, 10], 100)
    with pytest.raises(ValueError, match="outside"):
        check_buckets([200], 100)


def test_fixed_keep_rounds_up_to_a_bucket() -> None:
    buckets = (16, 64, 100)
    s = torch.rand(100)
    assert FixedKeep(64).choose(s, buckets) == 64
    assert FixedKeep(20).choose(s, buckets) == 64
    with pytest.raises(ValueError, match="no K bucket"):
        FixedKeep(101).choose(s, buckets)


def test_mass_keep_takes_the_smallest_bucket_holding_the_mass() -> None:
    s = torch.zeros(100)
    s[:10] = 0.08  # 80 % of the mass on 10 tokens
    s[10:] = 0.2 / 90
    buckets = (8, 10, 50, 100)
    assert MassKeep(0.8).choose(s, buckets) == 10
    assert MassKeep(0.5).choose(s, buckets) == 8
    assert MassKeep(0.85).choose(s, buckets) == 50
    assert MassKeep(1.0).choose(s, buckets) == 100
    with pytest.raises(ValueError):
        MassKeep(0.0)


def test_reset_schedule() -> None:
    assert [is_reset_frame(t, 8) for t in range(17)] == [t % 8 == 0 for t in range(17)]
    assert [is_reset_frame(t, 0) for t in range(4)] == [True, False, False, False]


def test_novelty_share_keeps_the_worst_matched_tokens() -> None:
    scores = torch.tensor([0.9, 0.8, 0.7, 0.1, 0.2, 0.05, 0.01, 0.3])
    novelty = torch.tensor([0.9, 0.9, 0.9, 0.2, 0.9, 0.1, 0.95, 0.9])  # 3 and 5 are new
    assert select_tokens(scores, 4).tolist() == [0, 1, 2, 7]  # share 0: plain top-K
    assert select_tokens(scores, 4, novelty, 0.5).tolist() == [0, 1, 3, 5]
    # a token both important and new is not counted twice
    novelty[0] = 0.0
    assert select_tokens(scores, 4, novelty, 0.5).tolist() == [0, 1, 3, 5]
    assert select_tokens(scores, 8, novelty, 0.5).tolist() == list(range(8))
