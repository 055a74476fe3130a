"""Token tracking (main paper Eq. 4): carry importance from frame t-1 to frame t.

Template matching in token space on the raw patch embeddings z_0: token i of frame t takes
the importance of the most similar token of frame t-1 within a (2r+1)² window around it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rgtp.core.checks import check_int

SIMILARITIES = ("dot", "cosine")


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
    prev_z: torch.Tensor, z: torch.Tensor, grid: int, radius: int, similarity: str = "dot"
) -> torch.Tensor:
    """Source index in frame t-1 of every token of frame t.

    prev_z, z: (N, C) raw patch embeddings, raster order on a grid x grid grid.
    Returns (N,) int64 raster indices j* = argmax_j <z[i], prev_z[j]> over the window;
    cells off the grid are never candidates.
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"unknown similarity {similarity!r}; choose from {SIMILARITIES}")
    check_radius(radius, grid)
    if similarity == "cosine":
        prev_z, z = F.normalize(prev_z, dim=1), F.normalize(z, dim=1)
    c = z.shape[1]
    cur = z.view(grid, grid, c)
    padded = F.pad(prev_z.view(grid, grid, c), (0, 0, radius, radius, radius, radius))
    ys = torch.arange(grid, device=z.device)
    offsets = window_offsets(radius)
    sims = torch.empty(len(offsets), grid, grid, dtype=z.dtype, device=z.device)
    for d, (dy, dx) in enumerate(offsets):
        shifted = padded[radius + dy : radius + dy + grid, radius + dx : radius + dx + grid]
        sim = (cur * shifted).sum(-1)
        valid_y = ((ys + dy >= 0) & (ys + dy < grid)).unsqueeze(1)
        valid_x = ((ys + dx >= 0) & (ys + dx < grid)).unsqueeze(0)
        sims[d] = sim.masked_fill(~(valid_y & valid_x), float("-inf"))
    best = sims.argmax(dim=0)  # first maximum: the (0, 0) offset wins ties
    table = torch.tensor(offsets, device=z.device)  # (D, 2)
    dy, dx = table[best, 0], table[best, 1]
    return ((ys.unsqueeze(1) + dy) * grid + (ys.unsqueeze(0) + dx)).flatten()


def match_similarity(prev_z: torch.Tensor, z: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Cosine similarity (N,) of every token to the token it was matched to: near 1 for
    content seen in the previous frame, low for content that is new."""
    return (F.normalize(z, dim=1) * F.normalize(prev_z, dim=1)[source]).sum(dim=1)


def track(
    prev_scores: torch.Tensor,
    prev_z: torch.Tensor,
    z: torch.Tensor,
    grid: int,
    radius: int = 1,
    similarity: str = "dot",
    union: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tracked importance ŝ^t[i] = s^{t-1}[j*(i)] (N,), and each token's match similarity
    (N,) (see `match_similarity`). Radius 0 keeps every token at its position.

    union (an rgtp extension; False is the paper's Eq. 4): ŝ^t[i] = max(s^{t-1}[i],
    s^{t-1}[j*(i)]). When content moves less than a token between frames, token i holds
    part of what was at i and part of its matched source, so it keeps the larger of the two
    importances: the map grows along the motion instead of jumping by a whole token.
    """
    if radius == 0:
        source = torch.arange(z.shape[0], device=z.device)
    else:
        source = match_tokens(prev_z, z, grid, radius, similarity)
    tracked = prev_scores[source]
    if union:
        tracked = torch.maximum(tracked, prev_scores)
    return tracked, match_similarity(prev_z, z, source)
