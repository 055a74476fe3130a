"""Attention rollout: the recursion equals the explicit product; targets and head fusion."""

from __future__ import annotations

import pytest
import torch

from rgtp.core.rollout import (
    cls_target,
    detection_target,
    fuse_heads,
    rollout,
    write_rows,
)


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


def test_rows_standing_in_equal_the_rows_written_and_leave_the_buffers_alone() -> None:
    """Rollout through buffers with this step's rows standing in for some of theirs (and
    kept row sums) equals the explicit product over the buffers with those rows written;
    the buffers are not touched until `write_rows`, after which plain rollout agrees."""
    gen = torch.Generator().manual_seed(2)
    n = 48
    buffers = [fuse_heads(random_attention(4, n, gen), "rms") for _ in range(3)]
    sums = [b.sum(dim=1) for b in buffers]
    where = torch.randperm(n, generator=gen)[:17]
    fresh = [fuse_heads(random_attention(4, n, gen), "rms")[:17] for _ in range(3)]
    target = torch.rand(n, generator=gen, dtype=torch.float64)
    before = [b.clone() for b in buffers] + [s.clone() for s in sums]

    got = rollout(buffers, target, sums, where, fresh)
    assert all(torch.equal(a, b) for a, b in zip(before, buffers + sums, strict=True))
    written = [b.index_copy(0, where, f) for b, f in zip(buffers, fresh, strict=True)]
    want = explicit_rollout(written, target)
    assert (got - want).norm() / want.norm() <= 1e-12
    assert torch.allclose(rollout(buffers, target, None, where, fresh), want, atol=1e-14)

    for b, s, f in zip(buffers, sums, fresh, strict=True):
        write_rows(b, s, where, f)
    assert all(
        torch.allclose(s, b.sum(dim=1), atol=1e-14) for b, s in zip(buffers, sums, strict=True)
    )
    assert torch.allclose(rollout(buffers, target, sums), want, atol=1e-14)


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


def reference_pooled_rows(
    rows: torch.Tensor, queries: torch.Tensor, grid: int, pool: int
) -> dict[int, torch.Tensor]:
    """The authors' pooled attention, from its definition, one cell at a time: keys summed
    over each pool x pool cell, queries averaged over the computed ones in each cell."""
    side = grid // pool

    def cell(t: int) -> int:
        return (t // grid // pool) * side + (t % grid) // pool

    out: dict[int, list[torch.Tensor]] = {}
    for row, q in zip(rows, queries.tolist(), strict=True):
        pooled = torch.zeros(side * side, dtype=rows.dtype)
        for key in range(grid * grid):
            pooled[cell(key)] += row[key]
        out.setdefault(cell(q), []).append(pooled)
    return {c: torch.stack(v).mean(0) for c, v in out.items()}


def reference_bilinear_x2(img: torch.Tensor) -> torch.Tensor:
    """Bilinear 2x upsampling with half-pixel centres, written out: output i samples the
    input at (i + 0.5) / 2 - 0.5, clamped to the border."""
    side = img.shape[0]
    out = torch.zeros(2 * side, 2 * side, dtype=img.dtype)

    def taps(i: int) -> tuple[int, int, float]:
        src = max((i + 0.5) / 2 - 0.5, 0.0)
        lo = min(int(src), side - 1)
        return lo, min(lo + 1, side - 1), src - lo

    for y in range(2 * side):
        y0, y1, wy = taps(y)
        for x in range(2 * side):
            x0, x1, wx = taps(x)
            top = (1 - wx) * img[y0, x0] + wx * img[y0, x1]
            bottom = (1 - wx) * img[y1, x0] + wx * img[y1, x1]
            out[y, x] = (1 - wy) * top + wy * bottom
    return out


def test_pooled_rows_equal_their_definition() -> None:
    from rgtp.core.rollout import pool_attention_rows

    gen = torch.Generator().manual_seed(3)
    grid, pool = 6, 2
    n = grid * grid
    queries = torch.randperm(n, generator=gen)[:13].sort().values
    rows = fuse_heads(random_attention(3, n, gen)[:, queries], "rms")
    cells, pooled = pool_attention_rows(rows, queries, grid, pool)
    ref = reference_pooled_rows(rows, queries, grid, pool)
    assert cells.tolist() == sorted(ref)
    for c, row in zip(cells.tolist(), pooled, strict=True):
        assert (row - ref[c]).abs().max() <= 1e-12
    # pooling keeps each row's mass
    assert torch.allclose(pooled.sum(1), torch.stack([ref[c].sum() for c in sorted(ref)]))


def test_pooled_rollout_equals_its_reference() -> None:
    """The paper's 672-px setting: rollout over 2x2-pooled rows, s_L pooled as the authors
    pool the anchor mask, result upsampled bilinearly; against an explicit product on the
    pooled grid and a written-out bilinear upsampling (<= 1e-6)."""
    from rgtp.core.rollout import pool_attention_rows, token_importance

    gen = torch.Generator().manual_seed(4)
    grid, pool, side = 8, 2, 4
    n = grid * grid
    everyone = torch.arange(n)
    buffers = [
        pool_attention_rows(fuse_heads(random_attention(4, n, gen), "rms"), everyone, grid, pool)
        for _ in range(3)
    ]
    assert all(cells.tolist() == list(range(side * side)) for cells, _ in buffers)
    rows = [r for _, r in buffers]
    # boxes covering a 4 x 3 token block (two full cells, two half cells) and one token
    covered = torch.zeros(grid, grid)
    covered[2:6, 1:4] = 1
    covered[7, 7] = 1
    target = covered.flatten() / covered.sum()
    fast = token_importance(rows, target, grid, pool)

    mask = torch.zeros(side, side)
    for cy in range(side):
        for cx in range(side):
            mask[cy, cx] = float(covered[2 * cy : 2 * cy + 2, 2 * cx : 2 * cx + 2].mean() >= 0.5)
    pooled_target = (mask / mask.sum()).flatten().double()
    s = explicit_rollout([r.double() for r in rows], pooled_target)
    ref = reference_bilinear_x2(s.view(side, side)).flatten()
    ref = ref / ref.sum()
    assert (fast.double() - ref).abs().max() <= 1e-6
    assert fast.shape == (n,) and torch.isclose(fast.sum(), torch.tensor(1.0, dtype=fast.dtype))


def test_pooled_target_of_small_boxes_is_never_empty() -> None:
    from rgtp.core.rollout import pool_target

    target = torch.zeros(64)
    target[9] = 1.0  # one token: no 2 x 2 cell is half covered
    s = pool_target(target, 8, 2)
    assert torch.isfinite(s).all() and torch.isclose(s.sum(), torch.tensor(1.0))
    assert s.argmax() == 0 and s[0] == 1.0
    with pytest.raises(ValueError, match="does not divide"):
        pool_target(torch.ones(49) / 49, 7, 2)


@pytest.mark.parametrize(
    ("box", "covered"),
    [
        ([48.0, 48.0, 64.0, 64.0], [15]),  # touches the last row and column
        ([40.0, 40.0, 90.0, 90.0], [10, 11, 14, 15]),  # beyond the frame: clamped
        ([33.0, 1.0, 33.0, 1.0], [2]),  # zero area inside a token covers that token
        ([32.0, 16.0, 32.0, 16.0], []),  # zero area on a token corner covers none
        ([float("nan"), 0.0, 20.0, 20.0], []),  # NaN corner covers none
    ],
)
def test_detection_target_edge_boxes_are_never_nan(box: list[float], covered: list[int]) -> None:
    s = detection_target(torch.tensor([box]), torch.tensor([0.9]), grid=4, patch_size=16)
    assert torch.isfinite(s).all() and torch.isclose(s.sum(), torch.tensor(1.0))
    if covered:
        assert torch.nonzero(s).flatten().tolist() == covered
    else:
        assert torch.allclose(s, torch.full((16,), 1 / 16))  # no token covered: uniform
