"""Which tokens a frame keeps: top-K selection, K-bucket policies, the reset schedule."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from rgtp.core.checks import check_int, check_real
from rgtp.core.tracking import unit_rows


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
    # A policy with `schedule` (one K per stage, `ScheduleKeep`) is checked against each
    # stage's own buckets instead, and `choose` gives its first stage's K.


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


def schedule_name(schedule: Sequence[int]) -> str:
    """A keep schedule as the command line spells it: "96/77/64/48"."""
    return "/".join(str(k) for k in schedule)


def check_schedule(schedule: Sequence[int], stages: int, num_tokens: int) -> tuple[int, ...]:
    """A keep schedule for a model of `stages` stages and N = `num_tokens`: one K per stage,
    each in 1..N, never increasing (a stage keeps a subset of the tokens the one before
    ran on). Returns it as a tuple; ValueError names what is wrong."""
    name = schedule_name(schedule)
    if len(schedule) != stages:
        raise ValueError(
            f"keep schedule {name} gives {len(schedule)} K for a model with {stages} stages; "
            f"give one K per stage, e.g. {schedule_name([num_tokens // 4] * stages)}"
        )
    for i, k in enumerate(schedule):
        if isinstance(k, bool) or not isinstance(k, int) or not 0 < k <= num_tokens:
            raise ValueError(
                f"keep schedule {name}: K = {k} at stage {i} is outside 1..{num_tokens} (N)"
            )
        if i and k > schedule[i - 1]:
            raise ValueError(
                f"keep schedule {name} increases at stage {i} ({schedule[i - 1]} -> {k}); a "
                "stage keeps a subset of the tokens the stage before ran on: K never increases"
            )
    return tuple(schedule)


@dataclass(frozen=True)
class ScheduleKeep:
    """Keep K_i tokens at stage i (docs/method.md, "Keep schedules"): stage 0 the top K_0 of the
    tracked importance, each later stage the K_i of the previous stage's tokens with the highest
    importance at its first block (Eq. 8, `core.rollout.unroll`). Non-increasing; each K_i must be a
    bucket of stage i (`rgtp export --keep 96/77/64/48` exports them)."""

    schedule: tuple[int, ...]

    def __post_init__(self) -> None:
        ks = tuple(self.schedule)
        if not ks:
            raise ValueError("a keep schedule needs one K per stage, e.g. 96/77/64/48")
        ks = tuple(check_int("K (tokens kept at a stage)", k, 1) for k in ks)
        # its length and N are the model's: checked against the package (`check`)
        object.__setattr__(self, "schedule", check_schedule(ks, len(ks), max(ks)))

    def __str__(self) -> str:
        return schedule_name(self.schedule)

    def choose(self, scores: torch.Tensor, buckets: Sequence[int]) -> int:
        return self.schedule[0]

    def check(self, buckets: Sequence[Sequence[int]]) -> None:
        """`buckets`: each stage's own, sorted (N, the largest, in every stage's)."""
        n = max(max(b) for b in buckets)
        check_schedule(self.schedule, len(buckets), n)
        for i, (k, have) in enumerate(zip(self.schedule, buckets, strict=True)):
            if k not in have:
                raise ValueError(
                    f"keep schedule {self} needs K = {k} at stage {i}, and the package has no "
                    f"such graph (stage {i} has K buckets {list(have)}); export with "
                    f"--keep {self}"
                )


def keep_policy(
    k: int | Sequence[int] | None = None, mass: float | None = None
) -> KeepPolicy | None:
    """`FixedKeep(k)`, `ScheduleKeep(k)` for a sequence (one K per stage) or `MassKeep(mass)`
    from options that name at most one (None: dense)."""
    if k is not None and mass is not None:
        raise ValueError("give keep (K) or mass, not both")
    if isinstance(k, list | tuple):
        return ScheduleKeep(tuple(k))
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
        z = unit_rows(z)
    nearest = kept[(z @ z[kept].t()).argmax(dim=1)]  # (N,), read for the dropped only
    dropped = torch.ones_like(importance, dtype=torch.bool).index_fill_(0, kept, False)
    out = torch.where(dropped, importance[nearest], importance)  # no host sync: a graph
    return out / out.sum()
