"""Per-stream state of the pruned frame loop: everything that outlives one frame."""

from __future__ import annotations

import torch

from rgtp.models.plan import StagePlan


class StreamState:
    """Caches and buffers of one video stream.

    k_cache, v_cache: per block, (N, C) latest keys/values of every token.
    attn_rows: per global block, (N, N) last computed fused attention row of every token,
        which rollout uses for tokens this frame did not compute.
    out_map: (N, C) backbone output; pruned tokens keep their last computed feature.
    prev_patches, prev_importance: z_0 (N, C) and s_0 (N,) of the previous frame.
    """

    def __init__(self, plan: StagePlan, device: torch.device) -> None:
        n, c = plan.num_tokens, plan.dim
        depth = plan.config.backbone.depth
        self.k_cache = [torch.zeros(n, c, device=device) for _ in range(depth)]
        self.v_cache = [torch.zeros(n, c, device=device) for _ in range(depth)]
        self.attn_rows = {g: torch.zeros(n, n, device=device) for g in plan.global_blocks}
        self.out_map = torch.zeros(n, c, device=device)
        self.prev_patches: torch.Tensor | None = None
        self.prev_importance: torch.Tensor | None = None
        self.frame_index = 0

    def nbytes(self) -> int:
        tensors = [*self.k_cache, *self.v_cache, *self.attn_rows.values(), self.out_map]
        return sum(t.numel() * t.element_size() for t in tensors)
