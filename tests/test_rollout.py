"""Attention rollout: the recursion equals the explicit product; targets and head fusion."""

from __future__ import annotations

import pytest
import torch

from rgtp.core.rollout import cls_target, detection_target, fuse_heads, rollout


def random_attention(heads: int, n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(heads, n, n, generator=gen, dtype=torch.float64).mul(3).softmax(-1)


def explicit_rollout(fused: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Ãᵀ s_L with Ã = Â_L ... Â_1 formed explicitly (seed Eq. 1, 2, 6)."""
    n = target.numel()
    product = torch.eye(n, dtype=target.dtype)
    for a in fused:
        a_hat = a + torch.eye(n, dtype=a.dtype)
        a_hat = a_hat / a_hat.sum(dim=1, keepdim=True)
        product = a_hat @ product
    s = product.t() @ target
    return s / s.sum()


@pytest.mark.parametrize("mode", ["mean", "rms"])
def test_recursion_equals_explicit_product(mode: str) -> None:
    gen = torch.Generator().manual_seed(1)
    n = 64
    fused = [fuse_heads(random_attention(4, n, gen), mode) for _ in range(4)]
    target = torch.rand(n, generator=gen, dtype=torch.float64)
    target /= target.sum()
    fast, slow = rollout(fused, target), explicit_rollout(fused, target)
    rel = (fast - slow).norm() / slow.norm()
    assert rel <= 1e-6, rel
    assert torch.isclose(fast.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_fusions() -> None:
    attn = torch.tensor([[[0.2, 0.8]], [[0.6, 0.4]]])  # 2 heads, 1 query, 2 keys
    assert torch.allclose(fuse_heads(attn, "mean"), torch.tensor([[0.4, 0.6]]))
    rms = torch.sqrt(torch.tensor([[(0.04 + 0.36) / 2, (0.64 + 0.16) / 2]]))
    assert torch.allclose(fuse_heads(attn, "rms"), rms)
    with pytest.raises(ValueError, match="head fusion"):
        fuse_heads(attn, "max")


def test_identity_attention_keeps_target() -> None:
    # Attention that only looks at itself leaves importance where the output put it.
    n = 9
    target = cls_target(n, 4)
    assert torch.equal(rollout([torch.eye(n)] * 3, target), target)


def test_detection_target_floors_and_ceils_to_the_token_grid() -> None:
    # grid 4x4 of 16 px tokens; box x 17..40 covers columns 1..2, y 0..15.5 covers row 0
    boxes = torch.tensor([[17.0, 0.0, 40.0, 15.5], [0.0, 0.0, 64.0, 64.0]])
    scores = torch.tensor([0.9, 0.05])  # the second box is under the 0.1 threshold
    s = detection_target(boxes, scores, grid=4, patch_size=16)
    expected = torch.zeros(4, 4)
    expected[0, 1:3] = 0.5
    assert torch.equal(s.view(4, 4), expected)


def test_detection_target_without_boxes_is_uniform() -> None:
    s = detection_target(torch.zeros(0, 4), torch.zeros(0), grid=3, patch_size=16)
    assert torch.allclose(s, torch.full((9,), 1 / 9))
    low = detection_target(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([0.1]), 3, 16)
    assert torch.allclose(low, torch.full((9,), 1 / 9)), "score must exceed the threshold"
