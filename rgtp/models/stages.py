"""The pruned stages: runs of encoder blocks on the K kept tokens, with flat tensor
inputs/outputs, shared by every model family (the graphs around them are the family's,
`rgtp.families`).

`PrunedStage` runs its blocks against per-block key/value caches of all tokens, for a batch
of streams at once (a leading batch axis B on every input and output). Token-wise
work (norms, qkv, projection, MLP) touches the kept rows; global blocks attend them to all
keys; windowed blocks attend each query to the keys of its own window, with static shapes
(`PrunedStage._windowed`).

The same modules are the PyTorch reference engine and what gets exported to ONNX.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rgtp.core.rollout import FUSIONS, fuse_heads
from rgtp.models.cache_free_stage import CacheFreeStage
from rgtp.models.vit_ops import (
    attend,
    attention_output,
    grid_coords,
    rel_pos_terms,
    slot_of_token,
    window_slots,
)
from rgtp.models.vitdet import Attention, Block
from rgtp.package.plan import StagePlan

# the fewest query rows of a windowed-attention tile: smaller tiles save rows but each reads its
# window's w² keys and values (measured on vitdet-b's 14 x 14 windows, OpenVINO int8)
MIN_TILE_ROWS = 24


class PrunedStage(nn.Module):
    """Blocks `block_ids` of an encoder on the M = E + K kept rows (E prefix tokens, always
    kept, then K patch tokens; `plan.StagePlan`) of B streams at once; below, N counts all
    E + N rows. Every batch entry is one stream's own: the same arithmetic, row by row, as
    running the streams one at a time.

    forward(tokens (B, M, C), keep (B, M) int64 sorted row indices (the kept rows),
            k_cache_b, v_cache_b (B, N, C) for each block b of the stage, in order)
    -> (tokens (B, M, C), k_new_b, v_new_b (B, M, C) for each block, then attn_b (B, M, N),
        the head-fused attention rows of the kept queries, for each block of `row_blocks`).

    The caches hold the latest keys/values of all rows; the stage overwrites the kept rows
    in its own copy, and returns the fresh rows for the runtime to write back. (Global
    attention against the stale cache with the kept columns' scores and values corrected,
    which avoids that copy, measured no faster on ONNX Runtime CPU: the cache is still
    transposed into heads, and at small K the scores are as large as the cache.)

    With `dense_block` (one of the stage's blocks, its first), `tokens` holds all N tokens:
    that block's attention runs over all of them as in the dense model (so it needs no
    cache and returns no keys/values), and pruning to `keep` happens before its MLP — the
    authors' ViTDet configurations prune there.
    """

    def __init__(
        self,
        encoder: nn.Module,
        block_ids: Sequence[int],
        fusion: str = "rms",
        dense_block: int | None = None,
        row_blocks: Sequence[int] | None = None,
    ):
        """`encoder`: a module with `cfg` (an encoder config: grid, window_size, is_global,
        global_blocks, prefix_tokens) and `blocks` (pre-norm blocks with `attn.qkv`,
        `attn.proj`, `attn.split_heads`, `attn.bias`, `mlp`, `norm1`, `norm2`).
        `row_blocks`: the global blocks whose attention rows are returned (rollout reads
        them; the others attend alike without writing their probabilities out); None: all."""
        super().__init__()
        cfg = encoder.cfg
        self.cfg = cfg
        self.block_ids = tuple(block_ids)
        rows = cfg.global_blocks if row_blocks is None else row_blocks
        self.row_blocks = tuple(b for b in self.block_ids if b in rows and cfg.is_global(b))
        if dense_block is not None and dense_block not in self.block_ids:
            dense_block = None  # the dense block lives in another stage
        if dense_block is not None and dense_block != self.block_ids[0]:
            raise ValueError(f"the dense block {dense_block} must open its stage")
        self.dense_block = dense_block
        self.blocks = nn.ModuleList(encoder.blocks[i] for i in self.block_ids)
        self.fusion = fusion
        # Grid positions of every row, for position biases; prefix rows (which only families
        # without position biases have) read position 0.
        grid_y, grid_x = (
            torch.cat([p.new_zeros(cfg.prefix_tokens), p]) for p in grid_coords(cfg.grid)
        )
        self.register_buffer("grid_y", grid_y, persistent=False)
        self.register_buffer("grid_x", grid_x, persistent=False)
        if any(b.window_size for b in self.blocks):
            if cfg.prefix_tokens:
                raise ValueError("windowed blocks with prefix tokens are not supported")
            n = cfg.grid * cfg.grid
            slots = window_slots(cfg.grid, cfg.window_size)
            # the window layout (nW·w² slots) is gathered from the rows (padding slots read
            # row 0 and are then overwritten with the padding keys/values)
            self.register_buffer("gather_slots", torch.where(slots < n, slots, 0), False)
            self.register_buffer("pad_slots", torch.nonzero(slots == n).flatten(), False)
            # (N,) each token's slot: its window and its position there follow from it
            self.register_buffer("slot_of", slot_of_token(cfg.grid, cfg.window_size), False)

    def forward(self, tokens: torch.Tensor, keep: torch.Tensor, *caches: torch.Tensor):
        ids, blocks = list(self.block_ids), list(self.blocks)
        x = tokens
        if self.dense_block is not None:
            ids.pop(0)
            x = self._dense_then_prune(blocks.pop(0), x, keep)
        if len(caches) != 2 * len(blocks):
            raise ValueError(f"stage {self.block_ids} needs {2 * len(blocks)} caches")
        fresh: list[torch.Tensor] = []
        rows: list[torch.Tensor] = []
        for j, (b, block) in enumerate(zip(ids, blocks, strict=True)):
            k_cache, v_cache = caches[2 * j], caches[2 * j + 1]
            x, k, v, fused = self._block(block, x, keep, k_cache, v_cache, b in self.row_blocks)
            fresh += [k, v]
            if fused is not None:
                rows.append(fused)
        return (x, *fresh, *rows)

    def _dense_then_prune(self, block: Block, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """A windowed block on all N tokens (B, N, C) up to its attention, then its MLP on
        the kept ones -> (B, K, C)."""
        attn = block.attn
        q, k, v = attn.qkv(block.norm1(x)).chunk(3, dim=-1)  # (B, N, C) each
        everyone = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
        out = self._windowed(attn, block.window_size, q, everyone, (k, None), (v, None))
        x = rows_of(x + attn.proj(out), keep)
        return x + block.mlp(block.norm2(x))

    def _block(
        self,
        block: Block,
        x: torch.Tensor,
        keep: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        rows_out: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One cached block on the kept rows x (B, K, C) -> (x, fresh k, v (B, K, C), the
        fused attention rows (B, K, N) where `rows_out`, else None)."""
        attn = block.attn
        q, k, v = attn.qkv(block.norm1(x)).chunk(3, dim=-1)  # (B, K, C) each
        fused = None
        if block.window_size:
            out = self._windowed(attn, block.window_size, q, keep, (k_cache, k), (v_cache, v))
        else:
            qh = attn.split_heads(q)  # (B, h, K, d)
            ys, xs = self.grid_y[keep], self.grid_x[keep]
            k_all, v_all = with_rows(k_cache, keep, k), with_rows(v_cache, keep, v)
            kh, vh = attn.split_heads(k_all), attn.split_heads(v_all)  # (B, h, N, d)
            if rows_out:
                # the rel-pos bias as its two terms: `attend` adds them without writing the
                # (K, N) bias out (measured: a tenth of a K = 512 stage on OpenVINO int8)
                bias = (
                    rel_pos_terms(qh, ys, xs, attn.rel_pos_h, attn.rel_pos_w)
                    if isinstance(attn, Attention) and attn.use_rel_pos
                    else attn.bias(qh, ys, xs)
                )
                o, probs = attend(qh, kh, vh, bias)
                fused = fuse_heads_by_head(probs, self.fusion)  # (B, K, N)
            else:
                o = attention_output(qh, kh, vh, attn.bias(qh, ys, xs))
            out = o.transpose(1, 2).reshape(x.shape)
        x = x + attn.proj(out)
        x = x + block.mlp(block.norm2(x))
        return x, k, v, fused

    def _windowed(
        self,
        attn: Attention,
        window: int,
        q: torch.Tensor,
        keep: torch.Tensor,
        keys: tuple[torch.Tensor, torch.Tensor | None],
        values: tuple[torch.Tensor, torch.Tensor | None],
    ) -> torch.Tensor:
        """Windowed attention of the kept queries q (B, K, C) at rows `keep` (B, K) ->
        (B, K, C), each query against the w² keys of its own window, as the dense model
        computes it. `keys`, `values`: every row's (B, N, C) (the caches) and the kept rows'
        fresh ones (B, K, C) that replace them (None: the rows are current).

        The keys and values are laid out window by window straight from the rows (one
        gather), the fresh rows and the padding written into that copy: padding slots of the
        dense model hold normalised zeros, so their keys/values are the qkv bias.

        The queries are packed into tiles of r rows (`tile_rows`), each tile holding queries
        of one window: a window with n kept queries fills ⌈n / r⌉ tiles, so
        T = min(nW·⌈w²/r⌉, ⌊(K + nW·(r - 1)) / r⌋) tiles hold every frame's queries, however
        they fall into windows. The attention is B·T tiles of r queries against their
        window's w² keys (each tile reads its window's keys: one gather of the window
        layout): query rows grow with K (at most K + nW·(r - 1)) instead of every window's
        w², with shapes that depend on K only, and one fused kernel. The rel-pos bias is
        computed in the same layout, row by row from the position the row's query has in its
        window.
        """
        c = q.shape[-1]
        if attn.qkv.bias is not None:
            pad_k, pad_v = attn.qkv.bias[c : 2 * c], attn.qkv.bias[2 * c :]
        else:
            pad_k = pad_v = q.new_zeros(c)
        area = window * window
        num_windows = self.gather_slots.numel() // area
        b, k = q.shape[0], q.shape[1]
        r, num_tiles = window_tiles(area, num_windows, k)
        slot = self.slot_of[keep]  # (B, K) its slot in the window layout
        place = slot % area  # (B, K) its position in its window
        window_of = slot // area  # (B, K) its window
        # r as a tensor for the tensor arithmetic below (the ONNX exporter cannot take a
        # symbolic r as a scalar operand of % and //)
        r_t = q.new_ones(r, dtype=torch.int64).sum()
        member = window_of.unsqueeze(-1) == torch.arange(num_windows, device=q.device)
        seen = member.long().cumsum(1)  # (B, K, nW) kept queries so far in each window
        rank = seen.gather(2, window_of.unsqueeze(-1)).squeeze(-1) - 1  # (B, K) in its window
        tiles = (seen[:, -1] + r_t - 1) // r_t  # (B, nW) tiles of each window
        first = tiles.cumsum(1) - tiles  # (B, nW) each window's first tile
        tile = first.gather(1, window_of) + rank // r_t  # (B, K) its tile
        row = rank % r_t  # (B, K) its row there
        # a tile's window: the last one whose first tile is at or before it (a window
        # without queries has no tiles and shares the next one's first tile; the tiles
        # past the last used one read the last window, and nobody reads their output)
        at = torch.arange(num_tiles, device=q.device).view(1, -1, 1)
        tile_window = (first.unsqueeze(1) <= at).sum(-1) - 1  # (B, T)
        batch = torch.arange(b, device=q.device).unsqueeze(1)
        sources = (tile_window + batch * num_windows).flatten()  # (B·T,) among B·nW windows
        home = tile + batch * num_tiles  # (B, K) among the B·T tiles
        index = (home * r_t + row).flatten()  # (B·K,) into the B·T·r query rows
        slots = num_windows * area  # a stream's slots in the window layout
        pads = self.pad_slots.numel()

        def windows(
            rows: tuple[torch.Tensor, torch.Tensor | None], pad: torch.Tensor
        ) -> torch.Tensor:
            """Every row's (B, N, C) and the fresh ones (B, K, C) or None, and the padding
            row (C,) -> each tile's window (B·T, w², h, d)."""
            every, fresh = rows
            t = every.index_select(1, self.gather_slots).reshape(-1, c)  # (B·nW·w², C)
            at, put = [], []
            if pads:
                at.append(flat_rows(self.pad_slots.expand(b, pads), slots))
                put.append(pad.expand(b * pads, c))
            if fresh is not None:
                at.append(flat_rows(slot, slots))
                put.append(fresh.reshape(-1, c))
            if at:
                t = t.index_copy(0, torch.cat(at), torch.cat(put))
            t = t.view(b * num_windows, area, attn.num_heads, c // attn.num_heads)
            # the tiles copy their windows before the heads are transposed: transposing the
            # nW windows first and copying (h, w², d) blocks measured slower on OpenVINO
            return t.index_select(0, sources)

        rows = q.new_zeros(b * num_tiles * r, c).index_copy(0, index, q.reshape(-1, c))
        qw = attn.split_heads(rows.view(b * num_tiles, r, c))  # (B·T, h, r, d)
        # the position in its window of the query each row holds (rows without a query hold
        # zeros, so their bias is zero whatever position they read)
        row_place = (
            place.new_zeros(b * num_tiles * r)
            .index_copy(0, index, place.flatten())
            .view(b * num_tiles, r)
        )
        bias = attn.bias(qw, attn.grid_y[row_place], attn.grid_x[row_place])  # (B·T, h, r, w²)
        kw = windows(keys, pad_k).transpose(1, 2)  # (B·T, h, w², d)
        vw = windows(values, pad_v).transpose(1, 2)
        if torch.compiler.is_exporting():
            # the graph spells the attention out (q scaled, then q·kᵀ): the exported fused
            # call scales k too, after its transpose, which keeps the layout copies in
            # float32 ahead of static int8's Q/DQ pair; spelled out, OpenVINO runs them on
            # int8 (the stage: 10-15 % less CPU time, docs/precision.md). Eager torch keeps
            # the fused kernel, the dense model's, so that K = N is the dense model exactly.
            o, _ = attend(qw, kw, vw, bias)  # (B·T, h, r, d)
        else:
            o = attention_output(qw, kw, vw, bias)
        # indexed by (tile, row), not by a flat row: a reshape merging a symbolic axis with
        # another makes the exporter guard the symbolic size
        return o.transpose(1, 2)[home, row].reshape(b, k, c)


def fuse_heads_by_head(probs: torch.Tensor, mode: str) -> torch.Tensor:
    """`rollout.fuse_heads` of attention probabilities (B, h, M, N) -> (B, M, N), the heads
    summed one by one in one element-wise chain over (M, N) slices instead of a reduction
    over the head axis (the same sum, up to float rounding): a graph compiler runs it as one
    pass that writes only the (M, N) result, where the reduction form writes the (h, M, N)
    squares out and reads them back (OpenVINO int8, a vitdet-b stage at K = 512: 3 % less
    CPU time, docs/precision.md)."""
    if probs.dtype in (torch.float16, torch.bfloat16) or mode not in FUSIONS:
        return fuse_heads(probs, mode)  # lifts reduced precision first; names bad modes
    heads = probs.shape[1]
    acc = None
    for i in range(heads):
        p = probs[:, i]
        term = p * p if mode == "rms" else p
        acc = term if acc is None else acc + term
    acc = acc / heads
    return acc.sqrt() if mode == "rms" else acc


def tile_rows(area: int, num_windows: int, k: int | torch.SymInt) -> int | torch.SymInt:
    """Query rows r of a windowed-attention tile (`PrunedStage._windowed`) for K kept
    queries in nW windows of `area` = w² slots: ⌈K / nW⌉, about one tile a window when the
    queries spread evenly, between `MIN_TILE_ROWS` and w², and whole windows (r = w²) from
    K >= nW·w²/2 on. SymInt arithmetic: a symbolic-K graph computes r from its K, and the
    fixed-K graphs derived from it (`export.onnx_graphs.fix_k`) fold it per K."""
    # from K >= nW·w²/2 on, whole windows: tiles of ⌈K/nW⌉ rows would need up to twice nW
    # tiles where most windows are full (a dense frame on a padded grid, e.g. 1024 px: 49
    # tiles of 164 rows against 25 windows of 196). One more term of the max (w² or 0)
    # rather than a branch, in the min-of-max form the exporter can bound.
    whole = area * torch.sym_min(1, (2 * k) // (num_windows * area))
    per_window = (k + num_windows - 1) // num_windows
    return torch.sym_min(area, torch.sym_max(MIN_TILE_ROWS, torch.sym_max(per_window, whole)))


def window_tiles(
    area: int, num_windows: int, k: int | torch.SymInt
) -> tuple[int | torch.SymInt, int | torch.SymInt]:
    """(r, T): the rows of a windowed-attention tile (`tile_rows`) and the tiles that hold K
    kept queries however they fall into the nW windows (`PrunedStage._windowed`), so T·r
    query rows run. T is at least 2 (the min never is less for nW >= 3; otherwise a spare
    tile nobody reads): the exporter's reshapes of a symbolic T guard T > 1, which it cannot
    prove of the min alone. Plain ints give the counts `rgtp flops` reports."""
    r = tile_rows(area, num_windows, k)
    tiles = torch.sym_min(num_windows * ((area + r - 1) // r), (k + num_windows * (r - 1)) // r)
    return r, torch.sym_max(2, tiles)


def flat_rows(keep: torch.Tensor, n: int) -> torch.Tensor:
    """Rows `keep` (B, K) of each batch entry's N rows as indices (B·K,) into all B·N rows."""
    offsets = torch.arange(keep.shape[0], device=keep.device).unsqueeze(1) * n
    return (keep + offsets).flatten()


def rows_of(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Rows `keep` (B, K) of each entry of x (B, N, C) -> (B, K, C)."""
    b, n, c = x.shape
    return x.reshape(b * n, c).index_select(0, flat_rows(keep, n)).view(b, -1, c)


def with_rows(cache: torch.Tensor, keep: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
    """A copy of `cache` (B, N, C) with rows `keep` (B, K) of each entry replaced by
    `fresh` (B, K, C)."""
    b, n, c = cache.shape
    index = flat_rows(keep, n)
    return cache.reshape(b * n, c).index_copy(0, index, fresh.reshape(-1, c)).view(b, n, c)


def stage_modules(encoder: nn.Module, plan: StagePlan) -> list[nn.Module]:
    """One module per stage of `plan`, sharing the encoder's parameters: `PrunedStage`s, or
    a cache-free plan's one `CacheFreeStage`."""
    if plan.cache_free:
        return [CacheFreeStage(encoder.blocks, plan.prefix, plan.fusion)]
    return [
        PrunedStage(encoder, blocks, plan.fusion, plan.dense_block, plan.rollout_blocks)
        for blocks in plan.stages
    ]
