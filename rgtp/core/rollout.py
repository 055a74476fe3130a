"""Attention rollout (seed Eq. 1, 2, 6, 7): which input tokens the prediction relied on.

Only matrix-vector products are formed: s_{l-1} = Â_lᵀ s_l, with Â_l = rownorm(Ā_l + I)
applied implicitly, so one step costs one pass over the N x N fused attention.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

FUSIONS = ("mean", "rms")


def fuse_heads(attn: torch.Tensor, mode: str = "rms") -> torch.Tensor:
    """Fuse the heads of attention probabilities (..., h, M, N) -> (..., M, N).

    "mean": (1/h) Σ A^h; "rms": sqrt((1/h) Σ (A^h)²), the authors' choice for both models.
    """
    if mode == "mean":
        return attn.mean(dim=-3)
    if mode == "rms":
        return attn.square().mean(dim=-3).sqrt()
    raise ValueError(f"unknown head fusion {mode!r}; choose from {FUSIONS}")


def rollout_step(fused: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """One backward step s_{l-1} = Â_lᵀ s_l for fused attention Ā_l (N, N), s_l (N,).

    With r_m = Σ_k Ā(m, k) + 1 the row sums of Ā + I, Â(m, n) = (Ā(m, n) + δ_mn) / r_m, so
    Âᵀ s = Āᵀ u + u where u = s / r: no N x N temporary is built.
    """
    u = s / (fused.sum(dim=1) + 1.0)
    return fused.t() @ u + u


def rollout(fused: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Importance of the input tokens, s_0 = Ãᵀ s_L, normalised to sum 1.

    fused: the fused attention (N, N) of each rollout block, in forward order;
    target: s_L (N,), what the output cares about. Returns s_0 (N,).
    """
    s = target
    for a in reversed(fused):
        s = rollout_step(a, s)
    return s / s.sum()


def detection_target(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    grid: int,
    patch_size: int,
    threshold: float = 0.1,
) -> torch.Tensor:
    """s_L for detection: the tokens covered by boxes scoring above `threshold`.

    boxes: (D, 4) (x1, y1, x2, y2) in model-input pixels, scores: (D,). Corners are floored
    / ceiled to the token grid. Returns (grid²,) summing to 1; uniform when no box passes.
    """
    device = scores.device
    sel = boxes[scores > threshold]
    if sel.numel() == 0:
        return torch.full((grid * grid,), 1.0 / (grid * grid), device=device)
    lo = torch.floor(sel[:, :2] / patch_size).clamp(0, grid)
    hi = torch.ceil(sel[:, 2:] / patch_size).clamp(0, grid)
    pos = torch.arange(grid, device=device, dtype=sel.dtype)
    in_x = (pos >= lo[:, 0:1]) & (pos < hi[:, 0:1])  # (D, grid) over columns
    in_y = (pos >= lo[:, 1:2]) & (pos < hi[:, 1:2])  # (D, grid) over rows
    covered = (in_y.unsqueeze(2) & in_x.unsqueeze(1)).any(0).flatten().to(torch.float32)
    total = covered.sum()
    if total == 0:  # boxes that pass but cover no token (degenerate / off-frame)
        return torch.full((grid * grid,), 1.0 / (grid * grid), device=device)
    return covered / total


def cls_target(
    num_tokens: int, cls_index: int = 0, device: torch.device | None = None
) -> torch.Tensor:
    """s_L for a CLS-token classifier: the one-hot CLS query row, (num_tokens,)."""
    s = torch.zeros(num_tokens, device=device)
    s[cls_index] = 1.0
    return s


def entropy_bits(s: torch.Tensor) -> float:
    """Entropy of an importance distribution in bits (a diagnostic for how peaked it is)."""
    p = s[s > 0]
    return float(-(p * p.log()).sum() / math.log(2.0))
