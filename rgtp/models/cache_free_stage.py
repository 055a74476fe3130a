"""The authors' ViViT pruning, cache-free (docs/method.md, "The paper preset for ViViT").

Their Kinetics-400 configurations prune after block 0's attention and run every later block
on the kept tokens alone: the dropped tokens leave attention entirely, nothing is cached, and
the step's output is the CLS token (a classifier reads nothing else). rgtp's own method
(`rgtp.models.stages`) instead keeps every block's keys and values of all tokens and lets the
kept queries attend to them; `PruningConfig.cache_free` chooses between them.

`CacheFreeStage` is both the PyTorch reference engine and the exported stage graph of a
cache-free package (`StagePlan.cache_free`); the runtime's streams drive it like any stage.
`CacheFreeStepper` runs one stream of it in plain PyTorch, the reference the runtime is
tested against.

One step, E prefix tokens (the CLS), N patches, K kept:
- block 0: norm, qkv and attention over all E + N tokens, projection and residual;
- keep the prefix and the K patches; block 0's MLP and blocks 1.. run on those E + K only;
- importance (`rgtp.core.rollout.cache_free_importance`): the CLS row of the rollout whose first
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

from rgtp.core.rollout import cache_free_importance, fuse_heads
from rgtp.core.selection import checkerboard, top_k
from rgtp.core.tracking import check_radius, track
from rgtp.models.vit_ops import attend


class CacheFreeStage(nn.Module):
    """The spatial encoder's blocks run the authors' way, for B streams at once: block 0 over
    every token up to its attention's residual, the rest on the prefix and the kept patches.
    It is the PyTorch reference engine and the exported stage graph of a cache-free plan
    (`StagePlan.cache_free`, `StagePlan.stage_spec`).

    blocks: pre-norm global blocks with `norm1`, `attn` (`qkv`, `proj`, `split_heads`),
    `norm2`, `mlp` (the ViViT spatial encoder's). prefix: E tokens before the patches, always
    kept. fusion: the rollout's head fusion ("rms", the authors').

    forward(tokens (B, E + N, C) with the position embedding, keep (B, E + K) int64 rows: the
    prefix rows then the kept patches' rows, E + index)
    -> (tokens (B, E + K, C) in `keep`'s order; attn_0 (B, E + K, E + N): block 0's fused
        attention rows of the kept queries over every token (rollout normalises them over
        all columns before it keeps the kept ones); attn_b (B, E + K, E + K) of each later
        block; keys_0 (B, N, C / h): block 0's patch keys averaged over heads, what a dropped
        token's importance is filled by).
    """

    def __init__(self, blocks: Sequence[nn.Module], prefix: int = 1, fusion: str = "rms") -> None:
        super().__init__()
        if not blocks:
            raise ValueError("a cache-free stage needs at least one block")
        self.blocks = nn.ModuleList(blocks)
        self.prefix = prefix
        self.fusion = fusion

    def forward(self, tokens: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, ...]:
        first = self.blocks[0]
        attn = first.attn
        q, k, v = attn.qkv(first.norm1(tokens)).chunk(3, dim=-1)
        k = attn.split_heads(k)  # (B, h, E + N, d)
        out, probs = attend(attn.split_heads(q), k, attn.split_heads(v), None)
        x = tokens + attn.proj(out.transpose(1, 2).reshape(tokens.shape))
        x = x.gather(1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (B, E + K, C)
        x = x + first.mlp(first.norm2(x))
        # the kept queries' rows: the rest of block 0's attention is never read
        rows = [fuse_heads(rows_of_heads(probs, keep), self.fusion)]
        for block in self.blocks[1:]:
            x, p = block(x)
            rows.append(fuse_heads(p, self.fusion))
        keys = k[:, :, self.prefix :].mean(dim=1)
        return (x, *rows, keys)


def rows_of_heads(probs: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Rows `keep` (B, M) of every head's attention probs (B, h, N, N) -> (B, h, M, N)."""
    b, h, _, n = probs.shape
    index = keep[:, None, :, None].expand(b, h, keep.shape[1], n)
    return probs.gather(2, index)


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
        e = self.stage.prefix
        kept = torch.cat([torch.arange(e, device=dev), keep + e])
        out, *rows, keys = self.stage(tokens[None], kept[None])
        s = cache_free_importance([r[0] for r in rows], keys[0], kept, e)
        self.prev_importance, self.prev_patches = s, patches
        self.index += 1
        return CacheFreeStep(out[0], keep, reset, s)
