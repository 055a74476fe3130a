"""Pure tensor functions of the ViTDet backbone, shared by the dense and the pruned forward.

Every function states its shapes; none holds parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split a token grid into non-overlapping windows, zero-padding the bottom/right edge.

    x: (B, H, W, C) -> windows (B * nW, window, window, C), padded size (Hp, Wp).
    """
    b, h, w, c = x.shape
    pad_h, pad_w = (-h) % window, (-w) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c), (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window: int, padded_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of `window_partition`: (B * nW, window, window, C) -> (B, H, W, C)."""
    hp, wp = padded_hw
    h, w = hw
    b = windows.shape[0] // ((hp // window) * (wp // window))
    x = windows.view(b, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :]


def window_slots(grid: int, window: int) -> torch.Tensor:
    """Raster token index held by every slot of the window-partitioned padded grid.

    Returns (nW * window * window,) int64 in window-major order (the order of
    `window_partition`); padding slots hold the value grid * grid, one past the last token,
    so that a table with one extra "padding" row can be gathered with it directly.
    """
    padded = grid + (-grid) % window
    ys, xs = torch.meshgrid(torch.arange(padded), torch.arange(padded), indexing="ij")
    index = torch.where((ys < grid) & (xs < grid), ys * grid + xs, grid * grid)
    index = index.view(padded // window, window, padded // window, window)
    return index.permute(0, 2, 1, 3).reshape(-1)


def slot_of_token(grid: int, window: int) -> torch.Tensor:
    """Inverse of `window_slots` on real tokens: (N,) int64 slot of each raster token."""
    slots = window_slots(grid, window)
    n = grid * grid
    inverse = torch.empty(n, dtype=torch.int64)
    real = slots < n
    inverse[slots[real]] = torch.nonzero(real).squeeze(1)
    return inverse


def resize_rel_pos(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """Linearly resample a relative-position table (L, C) -> (length, C).

    This is how ViTDet adapts tables trained at one input size to another.
    """
    if rel_pos.shape[0] == length:
        return rel_pos
    resized = F.interpolate(rel_pos.t().unsqueeze(0), size=length, mode="linear")
    return resized.squeeze(0).t()


def resize_abs_pos(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """Bicubically resample an absolute position embedding (1, G, G, C) -> (1, grid, grid, C)."""
    if pos.shape[1] == grid and pos.shape[2] == grid:
        return pos
    out = F.interpolate(
        pos.permute(0, 3, 1, 2), size=(grid, grid), mode="bicubic", align_corners=False
    )
    return out.permute(0, 2, 3, 1)


def rel_pos_terms(
    q: torch.Tensor,
    ys: torch.Tensor,
    xs: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decomposed relative-position logits for queries at given grid positions, as the two
    terms whose broadcast sum is the bias over the key grid.

    Keys form a square grid of side S and queries sit on the same grid, so the table of
    each axis has 2S - 1 rows, one per relative offset.
    q: (B, h, M, d) unscaled queries; ys, xs: (M,) or (B, M) int64 query coordinates in
    [0, S) (the same for every batch entry, or each entry's own);
    rel_pos_h, rel_pos_w: (2S - 1, d). Returns over key rows (B, h, M, S, 1) and over key
    columns (B, h, M, 1, S); their sum (B, h, M, S, S) is the bias of key (row, column).

    Each query is dotted with every offset once, (M, 2S - 1), then the S offsets it needs
    are picked, so the cost is the same for M = S² queries and for a pruned subset.
    """
    side = (rel_pos_h.shape[0] + 1) // 2
    b, h, m, _ = q.shape
    offsets = torch.arange(side, device=q.device)
    # offset index of (query row r, key row k) is r - k + S - 1
    # (..., M, S) -> (..., 1, M, S): broadcast over heads (and batch entries for (M,))
    pick_h = (ys.unsqueeze(-1) - offsets + side - 1).unsqueeze(-3).expand(b, h, m, side)
    pick_w = (xs.unsqueeze(-1) - offsets + side - 1).unsqueeze(-3).expand(b, h, m, side)
    rel_h = torch.gather(q @ rel_pos_h.t(), 3, pick_h)  # (B, h, M, S) over key rows
    rel_w = torch.gather(q @ rel_pos_w.t(), 3, pick_w)  # (B, h, M, S) over key cols
    return rel_h.unsqueeze(4), rel_w.unsqueeze(3)


def rel_pos_logits(
    q: torch.Tensor,
    ys: torch.Tensor,
    xs: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
) -> torch.Tensor:
    """`rel_pos_terms` summed: the bias (B, h, M, S * S) added to q·kᵀ over the key grid in
    raster order."""
    rows, cols = rel_pos_terms(q, ys, xs, rel_pos_h, rel_pos_w)
    b, h, m, side, _ = rows.shape
    return (rows + cols).reshape(b, h, m, side * side)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention that also returns its probabilities.

    q: (B, h, M, d), k, v: (B, h, Nk, d), bias: (B, h, M, Nk), or `rel_pos_terms`' pair
    ((B, h, M, S, 1), (B, h, M, 1, S)) for keys on an S x S grid (Nk = S²), or None.
    Returns output (B, h, M, d) and attention (B, h, M, Nk), rows summing to 1.
    The probabilities are needed for rollout, hence no fused kernel.

    The pair is added to the logits viewed over the key grid, the same sums in the same
    order as adding `rel_pos_logits`, so the result is identical; a graph compiler fuses
    the two adds into one pass over the logits instead of writing the (M, Nk) bias out.
    """
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if isinstance(bias, tuple):
        rows, cols = bias
        grid = logits.view(*rows.shape[:-1], cols.shape[-1])  # (B, h, M, S, S)
        logits = (grid + (rows + cols)).view(logits.shape)
    elif bias is not None:
        logits = logits + bias
    probs = logits.softmax(dim=-1)
    return probs @ v, probs


def attention_output(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """`attend`'s output alone, (B, h, M, d), where no one reads the probabilities (the
    dense model's blocks, pruned global blocks without rollout rows): one fused kernel where
    the backend has one, so the (M, Nk) logits, bias and probabilities are never all
    written out. (The pruned windowed tiles' exported graphs spell it out with `attend`:
    `PrunedStage._windowed` says why.)"""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def grid_coords(side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column of every raster position of a side x side grid: two (side²,) int64."""
    idx = torch.arange(side * side)
    return idx // side, idx % side
