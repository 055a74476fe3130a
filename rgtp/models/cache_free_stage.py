"""The authors' ViViT pruning, cache-free (docs/method.md, "The paper preset for ViViT").

Their Kinetics-400 configurations prune after block 0's attention and run every later block
on the kept tokens alone: the dropped tokens leave attention entirely, nothing is cached, and
the step's output is the CLS token (a classifier reads nothing else). rgtp's own method
(`rgtp.models.stages`) instead keeps every block's keys and values of all tokens and lets the
kept queries attend to them; both run here side by side, chosen by `PruningConfig.cache_free`.

One step, E prefix tokens (the CLS), N patches, K kept:
- block 0: norm, qkv and attention over all E + N tokens, projection and residual;
- keep the prefix and the K patches; block 0's MLP and blocks 1.. run on those E + K only;
- importance (`rgtp.core.rollout.cache_free_rollout`): the CLS row of the rollout whose first
  factor is block 0's Â restricted to the kept rows and columns; a dropped token takes the
  importance of the kept token whose block-0 key (averaged over heads) has the largest dot
  product with its own (`rgtp.core.selection.fill_from_most_similar`), then the map sums to 1.

The schedule (`CacheFreeStepper`): time step 0 runs every token; steps R, 2R, ... keep the 1-in-2
checkerboard; the others keep the top K of the previous step's importance tracked within radius
r on the raw patch embeddings (raw dot product, the authors' off-grid rule, `core.tracking`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from rgtp.core.rollout import cache_free_rollout, fuse_heads
from rgtp.core.selection import checkerboard, fill_from_most_similar, top_k
from rgtp.core.tracking import check_radius, track
from rgtp.models.vit_ops import attend


class CacheFreeStage(nn.Module):
    """The spatial encoder's blocks run the authors' way: block 0 over every token up to its
    attention's residual, the rest on the prefix and the kept patches.

    blocks: pre-norm global blocks with `norm1`, `attn` (`qkv`, `proj`, `split_heads`),
    `norm2`, `mlp` (the ViViT spatial encoder's). prefix: E tokens before the patches, always
    kept. fusion: the rollout's head fusion ("rms", the authors').
    """

    def __init__(self, blocks: Sequence[nn.Module], prefix: int = 1, fusion: str = "rms") -> None:
        super().__init__()
        if not blocks:
            raise ValueError("a cache-free stage needs at least one block")
        self.blocks = nn.ModuleList(blocks)
        self.prefix = prefix
        self.fusion = fusion

    def forward(
        self, tokens: torch.Tensor, keep: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """tokens: (E + N, C) with the position embedding; keep: (K,) patch indices in 0..N-1.

        Returns the output tokens (E + K, C), prefix first then the kept patches in `keep`'s
        order; block 0's fused attention (E + N, E + N); each later block's (E + K, E + K);
        block 0's keys averaged over heads (N, C / h), what dropped tokens are matched by.
        """
        e = self.prefix
        first = self.blocks[0]
        attn = first.attn
        q, k, v = attn.qkv(first.norm1(tokens[None])).chunk(3, dim=-1)
        k = attn.split_heads(k)  # (1, h, E + N, d)
        out, probs = attend(attn.split_heads(q), k, attn.split_heads(v), None)
        m, c = tokens.shape
        x = tokens + attn.proj(out.transpose(1, 2).reshape(1, m, c))[0]
        rows = torch.cat([torch.arange(e, device=keep.device), keep + e])
        x = x[rows]
        x = (x + first.mlp(first.norm2(x)))[None]
        later = []
        for block in self.blocks[1:]:
            x, p = block(x)
            later.append(fuse_heads(p[0], self.fusion))
        keys = k[0, :, e:].mean(dim=0)
        return x[0], fuse_heads(probs[0], self.fusion), later, keys


@dataclass
class CacheFreeStep:
    """What one step of `CacheFreeStepper` did: its output tokens (E + K, C), the patches it
    kept (K,), whether it was a reset step, and the importance (N,) it leaves for the next."""

    tokens: torch.Tensor
    keep: torch.Tensor
    reset: bool
    importance: torch.Tensor


class CacheFreeStepper:
    """One stream of the authors' ViViT pruning, time step by time step (torch, eager).

    k: patches kept on a pruned step; reset_every: R (steps 0, R, 2R, ... are reset steps:
    step 0 keeps all N, the others the checkerboard); radius: tracking radius; off_grid: the
    tracking's off-grid rule ("authors" for the paper). No keys, values or output map are
    kept between steps: the state is last step's importance and patch embeddings.
    """

    def __init__(
        self,
        stage: CacheFreeStage,
        grid: int,
        k: int,
        reset_every: int = 8,
        radius: int = 1,
        off_grid: str = "authors",
    ) -> None:
        n = grid * grid
        if not 0 < k <= n:
            raise ValueError(f"cannot keep {k} of the {n} patch tokens")
        if reset_every < 1:
            raise ValueError(f"reset_every must be >= 1 time step, got {reset_every}")
        check_radius(radius, grid)
        self.stage, self.grid, self.k = stage, grid, k
        self.reset_every, self.radius, self.off_grid = reset_every, radius, off_grid
        self.index = 0
        self.prev_importance: torch.Tensor | None = None
        self.prev_patches: torch.Tensor | None = None

    def step(self, patches: torch.Tensor, tokens: torch.Tensor) -> CacheFreeStep:
        """patches: raw patch embeddings z_0 (N, C); tokens: (E + N, C) with the position
        embedding (the family's `embed`)."""
        n, dev = self.grid * self.grid, patches.device
        reset = self.index % self.reset_every == 0
        if self.index == 0:
            keep = torch.arange(n, device=dev)
        elif reset:
            keep = checkerboard(self.grid, dev)
        else:
            assert self.prev_importance is not None and self.prev_patches is not None
            tracked, _ = track(
                self.prev_importance,
                self.prev_patches,
                patches,
                self.grid,
                self.radius,
                "dot",
                with_similarity=False,
                off_grid=self.off_grid,
            )
            keep = top_k(tracked, self.k)
        out, first, later, keys = self.stage(tokens, keep)
        e = self.stage.prefix
        kept = torch.cat([torch.arange(e, device=dev), keep + e])
        # with every token kept, filling fills nothing and only normalises
        s = fill_from_most_similar(cache_free_rollout(first, later, kept)[e:], keys, keep)
        self.prev_importance, self.prev_patches = s, patches
        self.index += 1
        return CacheFreeStep(out, keep, reset, s)
