"""Importance at a later layer (docs/method.md, keep schedules): the per-block solves equal
the explicit inverse of the partial rollout, and undo rollout."""

from __future__ import annotations

import torch

from rgtp.core.rollout import fuse_heads, rollout, unroll, unroll_step


def fused_blocks(blocks: int, n: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [
        fuse_heads(torch.randn(4, n, n, generator=gen, dtype=torch.float64).mul(3).softmax(-1))
        for _ in range(blocks)
    ]


def partial_rollout(fused: list[torch.Tensor]) -> torch.Tensor:
    """Ã_(l,1) = Â_l ... Â_1 formed explicitly, Â = rownorm(Ā + I)."""
    n = fused[0].shape[0]
    product = torch.eye(n, dtype=torch.float64)
    for a in fused:
        a_hat = a + torch.eye(n, dtype=a.dtype)
        product = (a_hat / a_hat.sum(dim=1, keepdim=True)) @ product
    return product


def test_the_solves_equal_the_explicit_inverse() -> None:
    fused = fused_blocks(3, 48, seed=0)
    s0 = torch.rand(48, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    explicit = torch.linalg.inv(partial_rollout(fused).t()) @ s0
    solved = s0
    for a in fused:
        solved = unroll_step(a, solved, a.sum(dim=1))
    assert float((solved - explicit).norm() / explicit.norm()) <= 1e-6
    # one block, sums summed by the step itself
    one = torch.linalg.inv(partial_rollout(fused[:1]).t()) @ s0
    assert float((unroll_step(fused[0], s0) - one).norm() / one.norm()) <= 1e-6


def test_rollout_then_unroll_round_trips() -> None:
    fused = fused_blocks(4, 40, seed=2)
    s_l = torch.rand(40, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    s_l /= s_l.sum()
    back = unroll(fused, rollout(fused, s_l))
    assert torch.allclose(back, s_l, rtol=1e-9, atol=1e-12)
    assert torch.allclose(rollout(fused, back), rollout(fused, s_l), rtol=1e-9, atol=1e-12)


def test_unrolled_importance_is_a_distribution() -> None:
    # a tracked s_0 that no s_l rolls out to: entries would go negative; they are clamped
    fused = fused_blocks(2, 32, seed=4)
    s0 = torch.zeros(32, dtype=torch.float64)
    s0[:3] = 1.0
    s = unroll(fused, s0)
    assert float(s.min()) >= 0.0 and abs(float(s.sum()) - 1.0) < 1e-12
    assert bool((s[:3] > 0).all())
    assert torch.equal(unroll([], s0), s0 / s0.sum())
