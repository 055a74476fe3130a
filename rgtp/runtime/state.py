"""Per-stream state of the pruned loop: everything that outlives one step."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rgtp.package.family import Task
from rgtp.package.plan import StagePlan


class StreamState:
    """Caches and buffers of one video stream. Rows: E prefix tokens then N patch tokens
    (`plan.StagePlan`).

    k_cache, v_cache: per block, (E + N, C) latest keys/values of every row (empty for a
        block whose attention runs over all tokens every step); views of `stage_caches`.
        In their stage's `cache_dtypes` entry: the stage engines' (int8 for a static int8
        package's graphs, which quantize and dequantize them on scales of their own), else
        `dtype`.
    stage_caches: per stage, (2 B, E + N, C): the keys and values of its B cached blocks.
    attn_rows: per rollout block, (E + N, E + N) last computed fused attention row of every
        row, which rollout uses for rows this step did not compute; with rollout pooling p,
        (N/p², N/p²) rows of the pooled grid (`core.rollout.pool_attention_rows`).
    attn_sums: per rollout block, the row sums of `attn_rows` (rollout reads each buffer
        once); both are written together at a step's commit (`core.rollout.write_rows`).
    out_map: (E + N, C) encoder output; pruned tokens keep their last computed feature.
    gathered: per K bucket, the buffers a step's stages read, allocated on first use and
        rewritten in place every step, so that engines replaying CUDA graphs see the same
        addresses: tokens (E + K, C) and their rows (E + K,) (the prefix rows filled once).
    subsets: per (stage, K), the same for a stage that runs fewer tokens than the stage
        before (a keep schedule, `core.selection.ScheduleKeep`).
    all_tokens: (E + N, C), a stage that reads every token reads them here (static inputs).
    prev_patches, prev_importance: z_0 (N, C) and s_0 (N,) of the previous step.
    ref_patches: z_0 (N, C) of every token as it was when its cached keys and values were
        last computed; kept only for novelty against the cache (`PruningConfig.novelty`).
    pending: model-input frames of a time step still short of its frames (a tubelet).
    task: the family's per-stream part (`rgtp.families.Task`).
    """

    def __init__(
        self,
        plan: StagePlan,
        task: Task,
        rollout_blocks: Sequence[int],
        device: torch.device,
        rollout_pool: int = 1,
        dtype: torch.dtype = torch.float32,
        cache_dtypes: Sequence[torch.dtype] | None = None,
    ) -> None:
        n, c = plan.prefix + plan.num_tokens, plan.dim
        self.plan, self.device, self.dtype = plan, device, dtype
        cache_dtypes = cache_dtypes or [dtype] * len(plan.stages)
        depth = plan.encoder.depth
        rows = n if rollout_pool == 1 else plan.num_tokens // rollout_pool**2

        # A stage's caches are views of one tensor (2 B, E + N, C), keys and values of its B
        # cached blocks in turn, so that a commit writes them with one indexed copy.
        empty = torch.zeros(0, c, device=device, dtype=dtype)  # a dense block keeps none
        self.k_cache = [empty] * depth
        self.v_cache = [empty] * depth
        self.stage_caches: list[torch.Tensor] = []
        for i in range(len(plan.stages)):
            blocks = plan.cached_blocks(i)
            both = torch.zeros(2 * len(blocks), n, c, device=device, dtype=cache_dtypes[i])
            for j, b in enumerate(blocks):
                self.k_cache[b], self.v_cache[b] = both[2 * j], both[2 * j + 1]
            self.stage_caches.append(both)
        self.attn_rows = {g: torch.zeros(rows, rows, device=device) for g in rollout_blocks}
        self.attn_sums = {g: torch.zeros(rows, device=device) for g in rollout_blocks}
        self.out_map = torch.zeros(n, c, device=device, dtype=dtype)
        self.gathered: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.subsets: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._all_tokens: torch.Tensor | None = None
        self._static: dict[str, torch.Tensor] = {}
        self.prev_patches: torch.Tensor | None = None
        self.prev_importance: torch.Tensor | None = None
        self.ref_patches: torch.Tensor | None = None
        self.pending: list[torch.Tensor] = []
        self.task = task
        self.frame_index = 0  # steps run (time steps for a classifier)

    def gather(self, tokens: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows of the stages, (E + K,): the prefix then the kept patches `keep` (K,),
        and those rows of `tokens` (E + N, C), written into the bucket's buffers."""
        prefix = self.plan.prefix
        k = keep.numel()
        if k not in self.gathered:
            rows = torch.empty(prefix + k, dtype=torch.int64, device=self.device)
            rows[:prefix] = torch.arange(prefix, device=self.device)
            x = torch.empty(prefix + k, tokens.shape[1], dtype=self.dtype, device=self.device)
            self.gathered[k] = (x, rows)
        x, rows = self.gathered[k]
        torch.add(keep, prefix, out=rows[prefix:])
        torch.index_select(tokens.to(self.dtype), 0, rows, out=x)
        return x, rows

    def subset(
        self, stage: int, x: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows `positions` (E + K,) of the previous stage's output `x` (E + K', C) and of its
        row indices `rows` (E + K',), written into the buffers of (stage, K)."""
        key = (stage, positions.numel())
        if key not in self.subsets:
            self.subsets[key] = (
                torch.empty(key[1], x.shape[1], dtype=self.dtype, device=self.device),
                torch.empty(key[1], dtype=torch.int64, device=self.device),
            )
        xs, rs = self.subsets[key]
        torch.index_select(x.to(self.dtype), 0, positions, out=xs)
        torch.index_select(rows, 0, positions, out=rs)
        return xs, rs

    def refresh_references(self, patches: torch.Tensor, keep: torch.Tensor) -> None:
        """`ref_patches` rows `keep` (K,) from this step's `patches` (N, C), in place."""
        if self.ref_patches is None:
            self.ref_patches = torch.empty_like(patches)
        self.ref_patches.index_copy_(0, keep, patches.index_select(0, keep))

    def all_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """`tokens` (E + N, C) copied into the stream's own buffer."""
        if self._all_tokens is None:
            self._all_tokens = torch.empty_like(tokens, dtype=self.dtype)
        return self._all_tokens.copy_(tokens)

    def buffer(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """The stream's own buffer `name` (as `static`), made or remade at this shape and
        dtype; its contents are whatever was last written."""
        buffer = self._static.get(name)
        if buffer is None or buffer.shape != shape or buffer.dtype != dtype:
            buffer = self._static[name] = torch.empty(shape, dtype=dtype, device=self.device)
        return buffer

    def static(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """`value` copied into the stream's own buffer `name` (made on first use, again if
        the shape or dtype changes): the same address every step, for CUDA graphs."""
        return self.buffer(name, tuple(value.shape), value.dtype).copy_(value)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor of the state by name (prev_* once a step has run)."""
        out = {f"k_cache_{b}": t for b, t in enumerate(self.k_cache)}
        out |= {f"v_cache_{b}": t for b, t in enumerate(self.v_cache)}
        out |= {f"attn_rows_{g}": t for g, t in self.attn_rows.items()}
        out |= {f"attn_sums_{g}": t for g, t in self.attn_sums.items()}
        out["out_map"] = self.out_map
        if self.prev_patches is not None and self.prev_importance is not None:
            out |= {"prev_patches": self.prev_patches, "prev_importance": self.prev_importance}
        if self.ref_patches is not None:
            out["ref_patches"] = self.ref_patches
        out |= {f"pending_{i}": t for i, t in enumerate(self.pending)}
        out |= {f"task_{name}": t for name, t in self.task.tensors().items()}
        return out

    def nbytes(self) -> int:
        """Bytes of the caches and the output map."""
        tensors = [*self.k_cache, *self.v_cache, *self.attn_rows.values(), self.out_map]
        return sum(t.numel() * t.element_size() for t in tensors)
