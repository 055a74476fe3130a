"""Token tracking (main paper Eq. 4): carry importance from frame t-1 to frame t.

Template matching in token space on the raw patch embeddings z_0: token i of frame t takes
the importance of the most similar token of frame t-1 within a (2r+1)² window around it.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from rgtp.core.checks import check_int

SIMILARITIES = ("dot", "cosine")
# What an off-grid cell of the window is: "skip", never a candidate (rgtp); "authors", the
# authors' zero padding: it scores 0, then every score exactly 0 is set to -100, the first
# best in raster (dy, dx) order wins, and an off-grid winner carries token 0's importance.
# So the padding wins only when every on-grid score is below -100 (a merely negative window
# still picks its best real neighbour).
OFF_GRID = ("skip", "authors")


def check_radius(radius: object, grid: int) -> int:
    """The tracking radius r as an int in 0..grid-1; ValueError otherwise. At grid - 1 the
    window already covers the whole grid, and the window's cost grows as (2r + 1)²."""
    return check_int(
        "tracking radius", radius, 0, grid - 1, f" (the token grid is {grid} x {grid})"
    )


def window_offsets(radius: int) -> list[tuple[int, int]]:
    """(dy, dx) offsets of the search window, (0, 0) first so that ties mean "no motion"."""
    offsets = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]
    return sorted(offsets, key=lambda o: (abs(o[0]) + abs(o[1]), o))


def match_tokens(
    prev_z: torch.Tensor,
    z: torch.Tensor,
    grid: int,
    radius: int,
    similarity: str = "dot",
    off_grid: str = "skip",
) -> torch.Tensor:
    """Source index in frame t-1 of every token of frame t.

    prev_z, z: (N, C) raw patch embeddings, raster order on a grid x grid grid.
    Returns (N,) int64 raster indices j* = argmax_j <z[i], prev_z[j]> over the window;
    off_grid "skip": cells off the grid are never candidates; "authors": see `OFF_GRID`.
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"unknown similarity {similarity!r}; choose from {SIMILARITIES}")
    if off_grid not in OFF_GRID:
        raise ValueError(f"unknown off-grid rule {off_grid!r}; choose from {OFF_GRID}")
    check_radius(radius, grid)
    if similarity == "cosine":
        prev_z, z = unit_rows(prev_z), unit_rows(z)
    candidates, valid = _window(grid, radius, z.device)  # (N, D) each
    sims = window_similarities(prev_z, z, grid, radius)
    if off_grid == "authors":
        raster = _raster_order(radius, z.device)  # their scan order decides their ties
        sims, candidates, valid = sims[:, raster], candidates[:, raster], valid[:, raster]
        candidates = torch.where(valid, candidates, 0)
        best = sims.masked_fill(sims == 0.0, -100.0).argmax(dim=1)
    else:
        best = sims.masked_fill(~valid, float("-inf")).argmax(dim=1)  # first max: (0, 0) on ties
    return candidates.gather(1, best.unsqueeze(1)).squeeze(1)


@functools.cache
def _raster_order(radius: int, device: torch.device) -> torch.Tensor:
    """Columns of `window_offsets` order (D,) that put the window in raster (dy, dx) order."""
    return torch.argsort(_band(1, radius, torch.device("cpu"))[1]).to(device)


def window_similarities(
    prev_z: torch.Tensor, z: torch.Tensor, grid: int, radius: int
) -> torch.Tensor:
    """<z[i], prev_z[j]> (N, D) for every token i and its candidate j at each
    `window_offsets` offset (0 where the offset leaves the grid).

    Per row offset dy, one batched matrix product takes every token of each grid row y
    against every token of row y + dy of the zero-padded last frame, (grid, grid, grid + 2r);
    the window's products are a band of it. That is (grid + 2r) / (2r + 1) times the
    multiply-adds of the window alone, but in a matrix product instead of an (N, D, C)
    gather: several times faster on CPUs and GPUs for the usual radii.
    """
    g, r, c = grid, radius, z.shape[1]
    prev = F.pad(prev_z.view(g, g, c), (0, 0, r, r, r, r))  # (g + 2r, g + 2r, C)
    rows = z.view(g, g, c)
    band, order = _band(g, r, z.device)
    per_dy = [
        torch.bmm(rows, prev[r + dy : r + dy + g].transpose(1, 2))  # (g, g, g + 2r)
        .view(g, -1)
        .index_select(1, band)
        .view(g, g, 2 * r + 1)
        for dy in range(-r, r + 1)
    ]
    return torch.stack(per_dy, dim=2).view(g * g, -1).index_select(1, order)


@functools.cache
def _band(grid: int, radius: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the window's products lie in a row's (grid, grid + 2r) products, flattened:
    column x + r + dx of row x, (grid * (2r + 1),) in (x, dx) order; and the permutation from
    (dy, dx) raster order to `window_offsets` order, (D,)."""
    span, width = 2 * radius + 1, grid + 2 * radius
    x = torch.arange(grid).view(grid, 1)
    band = (x * width + x + torch.arange(span).view(1, span)).flatten()
    order = torch.tensor([(dy + radius) * span + dx + radius for dy, dx in window_offsets(radius)])
    return band.to(device), order.to(device)


@functools.cache
def _window(grid: int, radius: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The raster index of every token's candidate at each `window_offsets` offset (N, D),
    clamped onto the grid, and whether the offset stays on the grid (N, D); made once per
    (grid, radius, device)."""
    offsets = torch.tensor(window_offsets(radius))  # (D, 2)
    pos = torch.arange(grid)
    rows = pos.view(grid, 1, 1) + offsets[:, 0]  # (grid, 1, D)
    cols = pos.view(1, grid, 1) + offsets[:, 1]  # (1, grid, D)
    valid = ((rows >= 0) & (rows < grid)) & ((cols >= 0) & (cols < grid))  # (grid, grid, D)
    index = rows.clamp(0, grid - 1) * grid + cols.clamp(0, grid - 1)
    d = offsets.shape[0]
    return index.reshape(grid * grid, d).to(device), valid.reshape(grid * grid, d).to(device)


def match_similarity(prev_z: torch.Tensor, z: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Cosine similarity (N,) of every token to the token it was matched to: near 1 for
    content seen in the previous frame, low for content that is new."""
    return row_cosine(z, prev_z[source])


def row_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each row of a (N, C) to the same row of b (N, C): (N,)."""
    return (unit_rows(a) * unit_rows(b)).sum(dim=1)


def unit_rows(z: torch.Tensor) -> torch.Tensor:
    """Each row of z (N, C) scaled to unit length, normalised in float32 (in float16 the
    norm's epsilon is zero and a zero row would divide by zero), in z's dtype."""
    return F.normalize(z.float(), dim=1).to(z.dtype)


def track(
    prev_scores: torch.Tensor,
    prev_z: torch.Tensor,
    z: torch.Tensor,
    grid: int,
    radius: int = 1,
    similarity: str = "dot",
    union: bool = False,
    with_similarity: bool = True,
    off_grid: str = "skip",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Tracked importance ŝ^t[i] = s^{t-1}[j*(i)] (N,), and each token's match similarity
    (N,) (see `match_similarity`; None when not `with_similarity`: it costs a dozen kernels
    a frame). Radius 0 keeps every token at its position.

    union (an rgtp extension; False is the paper's Eq. 4): ŝ^t[i] = max(s^{t-1}[i],
    s^{t-1}[j*(i)]). When content moves less than a token between frames, token i holds
    part of what was at i and part of its matched source, so it keeps the larger of the two
    importances: the map grows along the motion instead of jumping by a whole token.
    off_grid: what an off-grid window cell is (`OFF_GRID`).
    """
    if radius == 0:
        source = torch.arange(z.shape[0], device=z.device)
    else:
        source = match_tokens(prev_z, z, grid, radius, similarity, off_grid)
    tracked = prev_scores[source]
    if union:
        tracked = torch.maximum(tracked, prev_scores)
    return tracked, match_similarity(prev_z, z, source) if with_similarity else None
