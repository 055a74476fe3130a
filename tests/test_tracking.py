"""Token tracking carries importance along with the content of the frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data as skdata

from rgtp.core.tracking import (
    match_tokens,
    track,
    unit_rows,
    window_offsets,
    window_similarities,
)
from rgtp.models.vitdet import PatchEmbed

GRID, PATCH = 12, 16


def patch_embed() -> PatchEmbed:
    torch.manual_seed(0)
    return PatchEmbed(PATCH, 3, 64).eval()


MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)


def embed(module: PatchEmbed, image: np.ndarray) -> torch.Tensor:
    """Raw patch embeddings z_0 (N, 64) of an RGB image, normalised as the detector does."""
    x = (torch.as_tensor(image, dtype=torch.float32).permute(2, 0, 1)[None] - MEAN) / STD
    with torch.no_grad():
        return module(x)[0].reshape(-1, 64)


def shifted_pair(image: np.ndarray, dy: int, dx: int) -> tuple[np.ndarray, np.ndarray]:
    """Two GRID x GRID token views of `image`, the second moved by (dy, dx) tokens."""
    side, m = GRID * PATCH, 3 * PATCH
    prev = image[m : m + side, m : m + side]
    cur = image[m - dy * PATCH : m - dy * PATCH + side, m - dx * PATCH : m - dx * PATCH + side]
    return prev, cur


def interior(radius: int) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
    inside = (y >= radius) & (y < GRID - radius) & (x >= radius) & (x < GRID - radius)
    return inside.flatten()


def true_source(dy: int, dx: int) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
    return ((y - dy) * GRID + (x - dx)).flatten()


@pytest.mark.parametrize("radius", [1, 2])
def test_cosine_tracking_carries_importance_exactly(radius: int) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (GRID * PATCH + 6 * PATCH,) * 2 + (3,), dtype=np.uint8)
    module = patch_embed()
    scores = torch.rand(GRID * GRID, generator=torch.Generator().manual_seed(2))
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            prev, cur = shifted_pair(image, dy, dx)
            # tokens whose true source lies on the previous grid
            ok = interior(radius) & (true_source(dy, dx) >= 0)
            got, sim = track(
                scores, embed(module, prev), embed(module, cur), GRID, radius, "cosine"
            )
            assert torch.allclose(sim[ok], torch.ones(int(ok.sum())), atol=1e-5)
            want = scores[true_source(dy, dx).clamp(0, GRID * GRID - 1)]
            assert torch.equal(got[ok], want[ok]), (dy, dx)


def test_dot_product_tracking_on_a_real_photograph() -> None:
    """The paper's raw dot product prefers high-norm neighbours; report how often it still
    finds the true source on a real photograph (chance is 1/9 with r = 1)."""
    image = skdata.astronaut()
    module = patch_embed()
    shares = []
    for dy, dx in [(1, 0), (0, -1), (1, 1), (-1, 1)]:
        prev, cur = shifted_pair(image, dy, dx)
        src = match_tokens(embed(module, prev), embed(module, cur), GRID, 1, "dot")
        inside = interior(1)
        shares.append((src[inside] == true_source(dy, dx)[inside]).float().mean().item())
    print(f"dot-product tracking: share of interior tokens matched to their source {shares}")
    assert min(shares) > 0.25


def test_radius_zero_is_same_position_and_offsets_prefer_no_motion() -> None:
    s = torch.rand(GRID * GRID)
    z = torch.randn(GRID * GRID, 8)
    assert torch.equal(track(s, z, torch.randn_like(z), GRID, 0)[0], s)
    assert window_offsets(1)[0] == (0, 0)
    # identical frames with constant embeddings: every candidate ties, (0, 0) must win
    flat = torch.ones(GRID * GRID, 8)
    assert torch.equal(match_tokens(flat, flat, GRID, 2), torch.arange(GRID * GRID))


def test_union_keeps_importance_where_content_was_and_where_it_went() -> None:
    rng = np.random.default_rng(6)
    image = rng.integers(0, 256, (GRID * PATCH + 6 * PATCH,) * 2 + (3,), dtype=np.uint8)
    module = patch_embed()
    prev, cur = shifted_pair(image, 1, 0)  # content moves one token down
    z_prev, z_cur = embed(module, prev), embed(module, cur)
    scores = torch.zeros(GRID * GRID)
    scores[5 * GRID + 5] = 1.0
    paper, _ = track(scores, z_prev, z_cur, GRID, 1, "cosine")
    union, sim = track(scores, z_prev, z_cur, GRID, 1, "cosine", union=True)
    assert paper.nonzero().flatten().tolist() == [6 * GRID + 5]  # moved with the content
    assert union.nonzero().flatten().tolist() == [5 * GRID + 5, 6 * GRID + 5]  # and stayed
    assert torch.equal(union, torch.maximum(paper, scores))
    assert torch.equal(sim, track(scores, z_prev, z_cur, GRID, 1, "cosine")[1])
    assert torch.equal(track(scores, z_prev, z_cur, GRID, 0, union=True)[0], scores)


def test_off_grid_cells_are_never_candidates() -> None:
    z = torch.zeros(GRID * GRID, 4)
    prev = torch.zeros_like(z)
    # Zero padding off the grid would give similarity 0 > negatives: make all real
    # candidates negative and check the match stays on the grid.
    z[:] = 1.0
    prev[:] = -1.0
    src = match_tokens(prev, z, GRID, 2)
    assert src.min() >= 0 and src.max() < GRID * GRID
    corner = src[0].item()
    assert corner // GRID <= 2 and corner % GRID <= 2


def test_match_similarity_flags_new_content() -> None:
    """A patch that appears in this frame (no counterpart before) matches worse than
    content that moved: that is what the novelty share of K keeps."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (GRID * PATCH + 6 * PATCH,) * 2 + (3,), dtype=np.uint8)
    prev, cur = shifted_pair(image, 0, 1)
    cur = cur.copy()
    cur[5 * PATCH : 6 * PATCH, 5 * PATCH : 6 * PATCH] = (
        255 - cur[5 * PATCH : 6 * PATCH, 5 * PATCH : 6 * PATCH]
    )
    module = patch_embed()
    _, sim = track(
        torch.rand(GRID * GRID), embed(module, prev), embed(module, cur), GRID, 1, "cosine"
    )
    new = 5 * GRID + 5
    inside = interior(1)
    inside[new] = False
    assert sim[new] < sim[inside].min()


@pytest.mark.parametrize(("grid", "radius"), [(5, 1), (6, 2), (4, 3), (1, 0)])
def test_window_similarities_equal_the_dot_products_of_each_window(grid: int, radius: int) -> None:
    g = torch.Generator().manual_seed(grid * 10 + radius)
    prev, z = torch.randn(2, grid * grid, 8, generator=g, dtype=torch.float64)
    sims = window_similarities(prev, z, grid, radius)
    offsets = window_offsets(radius)
    assert sims.shape == (grid * grid, len(offsets))
    for i in range(grid * grid):
        y, x = divmod(i, grid)
        for d, (dy, dx) in enumerate(offsets):
            inside = 0 <= y + dy < grid and 0 <= x + dx < grid
            want = float(z[i] @ prev[(y + dy) * grid + x + dx]) if inside else 0.0
            assert float(sims[i, d]) == pytest.approx(want, abs=1e-12)


def test_unit_rows_in_half_precision_leave_zero_rows_zero() -> None:
    """Cosine tracking in float16 (the fp16 GPU path) normalises in float32: float16's
    epsilon would be 0, and a zero row would become NaN."""
    z = torch.zeros(3, 8, dtype=torch.float16)
    z[1] = 3.0
    out = unit_rows(z)
    assert out.dtype == torch.float16 and bool(out.isfinite().all())
    assert torch.equal(out[0], z[0]) and abs(float(out[1].float().norm()) - 1.0) < 1e-3
