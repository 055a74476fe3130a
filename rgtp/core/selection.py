"""Which tokens a frame keeps: top-K selection, K-bucket policies, the reset schedule."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from rgtp.core.checks import check_int, check_real


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores, returned in increasing index order: (k,) int64.

    Ties break towards the lower index (stable sort), so every backend that computes the
    same scores keeps the same tokens.
    """
    n = scores.numel()
    if not 0 < k <= n:
        raise ValueError(f"cannot keep {k} of {n} tokens")
    if k == n:
        return torch.arange(n, device=scores.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:k].sort().values


def select_tokens(
    scores: torch.Tensor,
    k: int,
    novelty: torch.Tensor | None = None,
    novelty_share: float = 0.0,
) -> torch.Tensor:
    """The k tokens a frame keeps, sorted: (k,) int64.

    With `novelty_share` 0 (the paper), the top-k of `scores`. Otherwise round(share * k)
    of the slots go to the tokens with the lowest `novelty` (N,) (similarity to the content
    they are compared with, `PruningConfig.novelty`) among those the importance did not
    pick: content entering the frame has no importance yet, because the previous frame's
    prediction could not see it.
    """
    reserve = round(novelty_share * k) if novelty is not None else 0
    if reserve == 0 or k == scores.numel():
        return top_k(scores, k)
    main = top_k(scores, k - reserve)
    candidates = novelty.clone()
    candidates[main] = float("inf")
    extra = top_k(-candidates, reserve)
    return torch.cat([main, extra]).sort().values


def check_buckets(buckets: Sequence[int], num_tokens: int) -> tuple[int, ...]:
    """Validate K buckets: sorted, unique, in 1..N, always including N (reset frames)."""
    out = sorted(set(int(b) for b in buckets) | {num_tokens})
    bad = [b for b in out if not 0 < b <= num_tokens]
    if bad:
        raise ValueError(f"K buckets {bad} outside 1..{num_tokens}")
    return tuple(out)


class KeepPolicy(Protocol):
    def choose(self, scores: torch.Tensor, buckets: Sequence[int]) -> int:
        """The bucket K for a frame, given its tracked importance (N,) and sorted buckets."""
        ...

    def check(self, buckets: Sequence[int]) -> None:
        """Raise ValueError now if some frame could ask for a K no bucket serves."""
        ...

    # A policy may also have `observe(k, ms)`: the stream calls it after every step with the
    # step's K and its time (`rgtp.runtime.latency_budget.LatencyBudget` learns from it).


@dataclass(frozen=True)
class FixedKeep:
    """Keep K tokens every frame: the smallest bucket holding at least `k`."""

    k: int

    def __post_init__(self) -> None:
        check_int("K (tokens kept per frame)", self.k, 1)

    def choose(self, scores: torch.Tensor, buckets: Sequence[int]) -> int:
        for b in buckets:
            if b >= self.k:
                return b
        raise ValueError(f"no K bucket holds {self.k} tokens (largest: {buckets[-1]})")

    def check(self, buckets: Sequence[int]) -> None:
        self.choose(torch.empty(0), buckets)


@dataclass(frozen=True)
class MassKeep:
    """Keep the smallest bucket whose top-K holds at least a share `p` of the importance."""

    p: float

    def __post_init__(self) -> None:
        check_real("importance mass", self.p, 0.0, 1.0, low_open=True)

    def choose(self, scores: torch.Tensor, buckets: Sequence[int]) -> int:
        ranked = torch.sort(scores, descending=True).values
        cumulative = ranked.cumsum(0) / ranked.sum().clamp(min=1e-30)
        for b in buckets:
            if cumulative[b - 1] >= self.p - 1e-6:
                return b
        return buckets[-1]

    def check(self, buckets: Sequence[int]) -> None:
        pass  # the largest bucket (N) always serves


def keep_policy(k: int | None = None, mass: float | None = None) -> KeepPolicy | None:
    """`FixedKeep(k)` or `MassKeep(mass)` from options that name at most one (None: dense)."""
    if k is not None and mass is not None:
        raise ValueError("give keep (K) or mass, not both")
    if k is not None:
        return FixedKeep(k)
    return None if mass is None else MassKeep(mass)


def is_reset_frame(frame_index: int, reset_every: int) -> bool:
    """Frame 0 and every R-th frame run dense and rebuild every cache (R = 0: only frame 0)."""
    check_int("reset_every", reset_every, 0)
    return frame_index == 0 or (reset_every > 0 and frame_index % reset_every == 0)


RESETS = ("dense", "checkerboard")


def checkerboard_size(grid: int) -> int:
    """Tokens `checkerboard(grid)` keeps: ceil(grid² / 2), the K bucket its reset needs."""
    return (grid * grid + 1) // 2


def checkerboard(grid: int, device: torch.device | None = None) -> torch.Tensor:
    """The authors' 1-in-2 reset pattern: raster indices (ceil(grid²/2),) of the tokens whose
    row + column is even, in increasing order."""
    idx = torch.arange(grid * grid, device=device)
    return idx[(idx // grid + idx % grid) % 2 == 0]


def fill_from_most_similar(
    importance: torch.Tensor, z: torch.Tensor, kept: torch.Tensor, similarity: str = "dot"
) -> torch.Tensor:
    """After a step that computed only the tokens `kept` (K,): every other token takes the
    importance of the kept token most similar to it (raw patch embeddings z (N, C), dot or
    cosine), as the authors' checkerboard reset does; renormalised to sum 1. (N,)"""
    if similarity == "cosine":
        z = F.normalize(z, dim=1)
    nearest = kept[(z @ z[kept].t()).argmax(dim=1)]  # (N,), read for the dropped only
    out = importance.clone()
    dropped = torch.ones_like(importance, dtype=torch.bool).index_fill_(0, kept, False)
    out[dropped] = importance[nearest[dropped]]
    return out / out.sum()
