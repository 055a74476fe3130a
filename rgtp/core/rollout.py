"""Attention rollout (seed Eq. 1, 2, 6, 7): which input tokens the prediction relied on.

Only matrix-vector products are formed: s_{l-1} = Â_lᵀ s_l, with Â_l = rownorm(Ā_l + I)
applied implicitly, so one step costs one pass over the N x N fused attention. Its inverse
(Eq. 8, importance at a later layer) solves one linear system per block (`unroll`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from rgtp.core.selection import fill_from_most_similar

FUSIONS = ("mean", "rms")


def fuse_heads(attn: torch.Tensor, mode: str = "rms") -> torch.Tensor:
    """Fuse the heads of attention probabilities (..., h, M, N) -> (..., M, N).

    "mean": (1/h) Σ A^h; "rms": sqrt((1/h) Σ (A^h)²), the authors' choice for both models.
    Reduced precision is lifted to float32 first (probabilities ~ 1/N square to float16's
    subnormals).
    """
    if attn.dtype in (torch.float16, torch.bfloat16):
        attn = attn.float()
    if mode == "mean":
        return attn.mean(dim=-3)
    if mode == "rms":
        return attn.square().mean(dim=-3).sqrt()
    raise ValueError(f"unknown head fusion {mode!r}; choose from {FUSIONS}")


def rollout_step(
    fused: torch.Tensor,
    s: torch.Tensor,
    sums: torch.Tensor | None = None,
    where: torch.Tensor | None = None,
    fresh: torch.Tensor | None = None,
) -> torch.Tensor:
    """One backward step s_{l-1} = Â_lᵀ s_l for fused attention Ā_l (M, M), s_l (M,).

    With r_m = Σ_k Ā(m, k) + 1 the row sums of Ā + I, Â(m, n) = (Ā(m, n) + δ_mn) / r_m, so
    Âᵀ s = Āᵀ u + u where u = s / r: no M x M temporary is built.

    sums: Ā's row sums (M,), kept beside a buffer so that a step reads Ā once (None: summed
    here). where, fresh: this step's rows `fresh` (K, M) of the queries `where` (K,) stand in
    for those rows of Ā without being written into it (the buffer stays as it was until the
    step commits): Āᵀ u = Ā_oldᵀ u' + freshᵀ u[where], u' = u with the `where` entries zero.
    """
    if sums is None:
        sums = fused.sum(dim=1)
    if where is None or fresh is None:
        u = s / (sums + 1.0)
        return fused.t() @ u + u
    fresh = fresh.to(fused.dtype)
    u = s / (sums.index_copy(0, where, fresh.sum(dim=1)) + 1.0)
    return fused.t() @ u.index_fill(0, where, 0.0) + fresh.t() @ u[where] + u


Where = torch.Tensor | Sequence[torch.Tensor] | None


def rollout(
    fused: Sequence[torch.Tensor],
    target: torch.Tensor,
    sums: Sequence[torch.Tensor] | None = None,
    where: Where = None,
    fresh: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Importance of the input tokens, s_0 = Ãᵀ s_L, normalised to sum 1.

    fused: the fused attention (M, M) of each rollout block, in forward order;
    target: s_L (M,), what the output cares about. Returns s_0 (M,).
    sums, where, fresh: per block as `rollout_step`: the buffers' row sums, and this step's
    rows standing in for theirs. `where`: the same queries (K,) in every block, or each
    block's own (a keep schedule runs fewer tokens in later stages).
    """
    s = target
    for i in reversed(range(len(fused))):
        s = rollout_step(
            fused[i],
            s,
            None if sums is None else sums[i],
            where if where is None or isinstance(where, torch.Tensor) else where[i],
            None if fresh is None else fresh[i],
        )
    return s / s.sum()


def cache_free_rollout(
    first: torch.Tensor, later: Sequence[torch.Tensor], kept: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """Rollout of a step whose first block attended over all M tokens and whose later blocks
    ran on the kept ones only (the authors' ViViT pruning, `rgtp.models.cache_free_stage`).

    first: block 0's fused attention rows of the kept queries (Mk, M), in `kept`'s order;
    later: each later block's (Mk, Mk), forward order; kept: the kept rows (Mk,) (indices
    into the M); target: s_L on the kept rows (Mk,) (the authors': one-hot on the CLS).
    The product Ã = Â_L ⋯ Â_1 · Â_0[kept][:, kept]: Â_0's rows are normalised over all M
    columns before the kept columns are taken. Returns (M,): Ã's s_L-weighted row on the
    kept tokens, 0 on the others (not normalised: the caller fills and normalises).
    """
    s = target.to(first.dtype)
    for a in reversed(later):
        s = rollout_step(a, s)
    # Â_0ᵀ s over the kept rows: u = s / r (r: those rows' sums over all M, plus 1), then
    # Ā_0ᵀ u + u on the kept columns
    u = s / (first.sum(dim=1) + 1.0)
    s = (first.t() @ u).index_select(0, kept) + u
    return first.new_zeros(first.shape[1]).index_copy(0, kept, s)


def cache_free_importance(
    rows: Sequence[torch.Tensor],
    keys: torch.Tensor,
    kept: torch.Tensor,
    prefix: int,
    target: torch.Tensor | None = None,
) -> torch.Tensor:
    """s_0 (N,) of the patch tokens after a cache-free step (a `CacheFreeStage`'s outputs of
    one stream): rollout from s_L `target` on the kept rows (E + K,) (None: one-hot on the
    first prefix token, the CLS, as the authors) through block 0's rows `rows[0]` (E + K,
    E + N) and each later block's (E + K, E + K) (`cache_free_rollout`); then every dropped
    token takes the importance of the kept token whose block-0 key, averaged over heads
    (`keys` (N, d)), has the largest dot product with its own, and the map sums to 1.
    kept: the kept rows (E + K,), prefix first."""
    if target is None:
        target = torch.zeros(kept.shape[0], dtype=rows[0].dtype, device=kept.device)
        target[0] = 1.0
    s = cache_free_rollout(rows[0], rows[1:], kept, target)[prefix:]
    # with every token kept, filling fills nothing and only normalises
    return fill_from_most_similar(s, keys, kept[prefix:] - prefix)


def keep_previous(
    importance: torch.Tensor, previous: torch.Tensor, computed: torch.Tensor
) -> torch.Tensor:
    """The authors' unpooled rollout (their 1024-px configurations): tokens not computed this
    frame keep the previous frame's final importance at the same grid cell (not the tracked
    one); computed tokens keep this frame's. importance, previous: (N,); computed: (K,)
    token indices. Returns (N,) normalised to sum 1."""
    out = previous.to(importance.dtype).index_copy(0, computed, importance[computed])
    return out / out.sum()


def unroll_step(
    fused: torch.Tensor, s: torch.Tensor, sums: torch.Tensor | None = None
) -> torch.Tensor:
    """One forward step of Eq. 8, the inverse of `rollout_step`: s_l with Â_lᵀ s_l = s_{l-1},
    for fused attention Ā_l (M, M) and s_{l-1} (M,).

    Â = D⁻¹(Ā + I) with D = diag(r), r the row sums of Ā + I, so Âᵀ y = s reads
    (Āᵀ + I) D⁻¹ y = s: solve (Āᵀ + I) w = s, then y = r ⊙ w. One LU solve, O(M³); no
    inverse is formed. sums: Ā's row sums (M,) (None: summed here). Ā + I is singular only
    if Ā has the eigenvalue -1, which non-negative attention rows with a positive diagonal
    do not give in practice.
    """
    if sums is None:
        sums = fused.sum(dim=1)
    eye = torch.eye(fused.shape[0], dtype=fused.dtype, device=fused.device)
    # solve_ex is linalg.solve without its error check, which would wait for the GPU (and so
    # break a CUDA graph); a singular system gives non-finite values, which `unroll` refuses
    w = torch.linalg.solve_ex(fused.t() + eye, s.to(fused.dtype).unsqueeze(1))[0].squeeze(1)
    return (sums + 1.0) * w


def unroll(
    fused: Sequence[torch.Tensor], s0: torch.Tensor, sums: Sequence[torch.Tensor] | None = None
) -> torch.Tensor:
    """Importance after some rollout blocks from the input's (Eq. 8, docs/method.md, "Keep
    schedules"): s_l = (Ã_(l,1)ᵀ)⁻¹ s_0 with Ã_(l,1) = Â_l ⋯ Â_1 the partial rollout of the
    blocks `fused` (M, M) each, in forward order; s0 (M,). Since Ã_(l,1)ᵀ = Â_1ᵀ ⋯ Â_lᵀ, s_l
    solves block 1 first. Returns s_l (M,), non-negative, summing to 1.

    Rollout smooths (Âᵀ averages), so undoing it sharpens, and an s_0 that rollout of no s_l
    could give (tracked importance, which moved with the scene) comes back with negative
    entries; importance is a share of the output's reliance, never negative, so those are
    clamped to 0 before renormalising (one bad token cannot push others out by sign). Where
    nothing positive and finite is left (a singular block), s_0 itself is returned.
    """
    s = s0
    for i, a in enumerate(fused):
        s = unroll_step(a, s, None if sums is None else sums[i])
    s = s.clamp_min(0.0)
    total = s.sum()
    ok = total.isfinite() & (total > 0)  # a tensor, not a branch: no wait for the GPU
    return torch.where(ok, s / torch.where(ok, total, 1.0), s0 / s0.sum())


def later_importance(
    rows: Sequence[torch.Tensor],
    s0: torch.Tensor,
    grid: int,
    pool: int = 1,
    sums: Sequence[torch.Tensor] | None = None,
    prefix: int = 0,
) -> torch.Tensor:
    """Importance of the patch tokens after some rollout blocks, (grid²,), from s_0 (grid²,)
    at the input: `unroll` through the blocks' buffered fused attention `rows` (forward
    order), (E + N, E + N) each, or pooled (N/pool², N/pool²) with `pool` > 1 (`s0` pooled
    onto their grid, the result upsampled as `token_importance` does).

    `prefix` E tokens (a CLS) come first in the rows and get no importance at the input:
    s_0 covers the patches only, and the prefix enters as the same learnt vector on every
    frame, so it holds nothing of this frame the output can rely on.
    """
    if pool > 1:
        side = _pooled_side(grid, pool)
        pooled = F.avg_pool2d(s0.view(1, 1, grid, grid), pool).flatten()
        assert pooled.numel() == side * side
        return upsample_importance(unroll(rows, pooled, sums), grid, pool)
    if prefix:
        s0 = torch.cat([s0.new_zeros(prefix), s0])
    s = unroll(rows, s0, sums)[prefix:]
    return s / s.sum()


def write_rows(
    buffer: torch.Tensor, sums: torch.Tensor, where: torch.Tensor, fresh: torch.Tensor
) -> None:
    """Rows `fresh` (K, M) of the queries `where` (K,) into a rollout buffer (M, M) and its row
    sums (M,), in place: what `rollout_step` read as standing in for them, summed alike."""
    fresh = fresh.to(buffer.dtype)
    buffer.index_copy_(0, where, fresh)
    sums.index_copy_(0, where, fresh.sum(dim=1))


def detection_target(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    grid: int,
    patch_size: int,
    threshold: float = 0.1,
) -> torch.Tensor:
    """s_L for detection: the tokens covered by boxes scoring above `threshold`.

    boxes: (D, 4) (x1, y1, x2, y2) in model-input pixels, scores: (D,). Returns (grid²,)
    summing to 1, never NaN.

    Corner rounding (the authors'): x1, y1 are floored and x2, y2 ceiled to token units, then
    clamped to [0, grid], and a box covers the tokens [floor(x1/p), ceil(x2/p)) in x (likewise
    in y). So a box reaching the last row/column (x2 = grid * p, or beyond the frame) covers
    it; a zero-area box inside a token (x1 = x2 = 33 at p = 16) covers that token; a
    zero-area box on a token border (x1 = x2 = 32) covers none. When no box passes the
    threshold, or the passing ones cover no token (degenerate, off-frame or NaN corners),
    every token gets the same share.
    """
    # Boxes below the threshold are masked, not dropped: no data-dependent shapes, so no
    # host synchronisation on a GPU.
    lo = torch.floor(boxes[:, :2] / patch_size).clamp(0, grid)
    hi = torch.ceil(boxes[:, 2:] / patch_size).clamp(0, grid)
    pos = torch.arange(grid, device=scores.device, dtype=boxes.dtype)
    in_x = (pos >= lo[:, 0:1]) & (pos < hi[:, 0:1])  # (D, grid) over columns (NaN: none)
    in_y = (pos >= lo[:, 1:2]) & (pos < hi[:, 1:2])  # (D, grid) over rows
    passing = (scores > threshold).view(-1, 1, 1)
    covered = (in_y.unsqueeze(2) & in_x.unsqueeze(1) & passing).any(0).flatten()
    covered = covered.to(torch.float32)
    total = covered.sum()
    uniform = torch.full_like(covered, 1.0 / (grid * grid))
    # no passing box, or passing boxes that cover no token (degenerate / off-frame)
    return torch.where(total > 0, covered / total.clamp_min(1.0), uniform)


def cls_target(
    num_tokens: int, cls_index: int = 0, device: torch.device | None = None
) -> torch.Tensor:
    """s_L for a CLS-token classifier: the one-hot CLS query row, (num_tokens,)."""
    s = torch.zeros(num_tokens, device=device)
    s[cls_index] = 1.0
    return s


def _pooled_side(grid: int, pool: int) -> int:
    if pool < 1 or grid % pool:
        raise ValueError(f"rollout pool size {pool} does not divide the {grid} x {grid} grid")
    return grid // pool


def pool_cells(tokens: torch.Tensor, grid: int, pool: int) -> torch.Tensor:
    """The pooled-grid cell (raster index on the (grid/pool)² grid) of each token index."""
    side = grid // pool
    return (tokens // grid // pool) * side + (tokens % grid) // pool


def pool_attention_rows(
    rows: torch.Tensor, queries: torch.Tensor, grid: int, pool: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused attention rows of some queries, pooled onto the pool x pool-coarser token grid.

    rows: (K, N) fused attention of the K queries `queries` (K,) (token indices, N = grid²).
    Keys are summed over each pool x pool cell (a row still sums to what it summed to);
    queries are averaged over the computed queries that fall in each cell, as the authors
    do with `rollout_pool_size`. Returns (cells (P,), pooled rows (P, N / pool²)): one row
    for every cell holding at least one of the queries, cells in increasing order. Cells no
    query fell in are absent: their buffered rows stay as they were.
    """
    side = _pooled_side(grid, pool)
    k = rows.shape[0]
    by_key = rows.reshape(k, side, pool, side, pool).sum(dim=(2, 4)).reshape(k, side * side)
    cell = pool_cells(queries, grid, pool)
    sums = torch.zeros(side * side, side * side, dtype=rows.dtype, device=rows.device)
    sums.index_add_(0, cell, by_key)
    counts = torch.bincount(cell, minlength=side * side)
    cells = torch.nonzero(counts).squeeze(1)
    return cells, sums[cells] / counts[cells].unsqueeze(1).to(rows.dtype)


def pool_target(target: torch.Tensor, grid: int, pool: int) -> torch.Tensor:
    """s_L on the pooled grid: a cell is a target when at least half of its tokens are
    (the authors' anchor-mask pooling), normalised to sum 1.

    target: (grid²,). When no cell reaches half (only small boxes), the cells' mean target
    is used instead, so small objects still guide the next frame (the authors' code divides
    by zero there).
    """
    side = _pooled_side(grid, pool)
    covered = F.avg_pool2d((target > 0).to(target.dtype).view(1, 1, grid, grid), pool)
    mask = (covered.flatten() >= 0.5).to(target.dtype)
    if mask.sum() == 0:
        mask = F.avg_pool2d(target.view(1, 1, grid, grid), pool).flatten()
    assert mask.numel() == side * side
    return mask / mask.sum()


def upsample_importance(pooled: torch.Tensor, grid: int, pool: int) -> torch.Tensor:
    """Importance on the pooled grid (grid²/pool²,) -> every token (grid²,), bilinearly (half-
    pixel centres, as `F.interpolate(..., align_corners=False)`), normalised to sum 1."""
    side = _pooled_side(grid, pool)
    up = F.interpolate(
        pooled.view(1, 1, side, side), scale_factor=pool, mode="bilinear", align_corners=False
    ).flatten()
    return up / up.sum()


def token_importance(
    rows: Sequence[torch.Tensor],
    target: torch.Tensor,
    grid: int,
    pool: int = 1,
    sums: Sequence[torch.Tensor] | None = None,
    where: Where = None,
    fresh: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """s_0 (grid²,) of every token from s_L (grid²,) through the buffered fused attention of
    each rollout block (forward order): (N, N) rows, or with `pool` > 1 the pooled
    (N/pool², N/pool²) rows of `pool_attention_rows`; rollout then runs on the pooled grid and
    the result is upsampled bilinearly. sums, where, fresh: as `rollout` (with pooling, the
    pooled cells and rows)."""
    if pool == 1:
        return rollout(rows, target, sums, where, fresh)
    pooled = rollout(rows, pool_target(target, grid, pool), sums, where, fresh)
    return upsample_importance(pooled, grid, pool)
