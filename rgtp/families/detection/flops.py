"""Analytic multiply-accumulate counts per frame, in two conventions.

The paper's "GFLOPs" are GMACs of the transformer backbone (patch embedding and blocks),
averaged over all frames of the reset schedule. Both conventions count token-wise layers on
K tokens, global attention of K queries against N keys, and relative-position terms as
implemented (each query dotted with every offset); with a keep schedule (one K per stage),
each block counts its stage's K. They differ in the windowed blocks:

- "paper": every window computed whole, padding slots included (the authors' count):
  nW·w² queries against w² keys, rel-pos for all nW·w² slots;
- "executed": what rgtp's stages run (`stages.PrunedStage._windowed`): the kept queries
  packed into T tiles of r rows, each tile against its window's w² keys
  (`stages.window_tiles`), and rel-pos for those T·r rows. T·r grows with K (at most
  K + nW·(r - 1)) and reaches the paper's nW·w² only once K fills every window.

Softmax, norms, GELU, head fusion of the attention rows and biases are counted in neither.
The method's own overhead (tracking, rollout) and the detection neck+head are counted
separately.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rgtp.core.selection import check_schedule
from rgtp.families.detection.config import DetectorConfig
from rgtp.models.config import BackboneConfig
from rgtp.models.stages import window_tiles
from rgtp.package.plan import partition_blocks

CONVENTIONS = ("paper", "executed")


@dataclass(frozen=True)
class FrameMACs:
    """MACs of one frame by part. `backbone` is the paper's quantity."""

    patch_embed: float
    token_wise: float
    attention: float
    rel_pos: float
    tracking: float
    rollout: float
    neck_head: float

    @property
    def backbone(self) -> float:
        return self.patch_embed + self.token_wise + self.attention + self.rel_pos

    @property
    def method_overhead(self) -> float:
        return self.tracking + self.rollout

    def as_dict(self) -> dict[str, float]:
        return {
            "patch_embed": self.patch_embed,
            "token_wise": self.token_wise,
            "attention": self.attention,
            "rel_pos": self.rel_pos,
            "backbone": self.backbone,
            "tracking": self.tracking,
            "rollout": self.rollout,
            "method_overhead": self.method_overhead,
            "neck_head": self.neck_head,
        }

    @staticmethod
    def mix(frames: list[tuple[float, FrameMACs]]) -> FrameMACs:
        """Weighted average of frames [(weight, macs)], weights summing to 1."""
        fields = FrameMACs.__dataclass_fields__
        return FrameMACs(**{f: sum(w * getattr(m, f) for w, m in frames) for f in fields})


def neck_head_macs(cfg: DetectorConfig) -> float:
    """MACs of the simple feature pyramid and the FCOS head over all levels."""
    b, h = cfg.backbone, cfg.head
    dim, grid, out = b.embed_dim, b.grid, h.neck_channels
    total = 0.0
    for s in h.scale_factors:
        side = grid * int(s * 4) // 4
        width = {4.0: dim // 4, 2.0: dim // 2}.get(s, dim)
        if s == 4.0:  # two stride-2 deconvs: dim -> dim/2 at 2x, dim/2 -> dim/4 at 4x
            total += (2 * grid) ** 2 * dim * (dim // 2) + side**2 * (dim // 2) * (dim // 4)
        elif s == 2.0:
            total += side**2 * dim * (dim // 2)
        total += side**2 * (width * out + out * out * 9)
        ch = h.head_channels
        tower = out * ch * 9 + (h.head_convs - 1) * ch * ch * 9
        total += side**2 * (2 * tower + ch * (h.num_classes + 4 + 1) * 9)
    return float(total)


def block_keeps(
    cfg: BackboneConfig,
    k: int | Sequence[int] | None,
    stages: Sequence[Sequence[int]] | None = None,
) -> list[int]:
    """The tokens each block runs on: k (None: N) at every block, or for a keep schedule
    (one K per stage, `core.selection.ScheduleKeep`) its stage's K; `stages`: the blocks
    of each stage (None: rgtp's default cut, "per-global")."""
    n = cfg.num_tokens
    if k is None or isinstance(k, int):
        k = n if k is None else k
        if not 0 < k <= n:
            raise ValueError(f"K must be in 1..{n}, got {k}")
        return [k] * cfg.depth
    stages = partition_blocks(cfg, "per-global") if stages is None else stages
    schedule = check_schedule(tuple(k), len(stages), n)
    return [schedule[i] for i, blocks in enumerate(stages) for _ in blocks]


def frame_macs(
    cfg: BackboneConfig,
    k: int | Sequence[int] | None = None,
    radius: int = 1,
    head: DetectorConfig | None = None,
    prune_from: str = "input",
    convention: str = "paper",
    stages: Sequence[Sequence[int]] | None = None,
) -> FrameMACs:
    """MACs of one frame keeping k tokens (None or N: a dense reset frame), or a keep
    schedule k (one K per stage of `stages`, as `block_keeps`: each block its stage's K).

    A dense frame runs no tracking; every frame runs rollout (it guides the next frame).
    `prune_from` "block0-mlp" (the authors'): block 0's qkv and projection (and, executed,
    its windowed attention) run on all N. `convention`: one of `CONVENTIONS` (module doc).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown FLOPs convention {convention!r}; choose from {CONVENTIONS}")
    n, c, g = cfg.num_tokens, cfg.embed_dim, cfg.grid
    ks = block_keeps(cfg, k, stages)
    hidden = int(c * cfg.mlp_ratio)
    per_token = 3 * c * c + c * c + 2 * c * hidden  # qkv, proj, mlp
    token_wise = sum(ks) * per_token
    if prune_from == "block0-mlp":
        token_wise += (n - ks[0]) * (3 * c * c + c * c)
    elif prune_from != "input":
        raise ValueError(f"unknown prune_from {prune_from!r}")
    globals_ = [b for b in range(cfg.depth) if cfg.is_global(b)]
    ws = cfg.window_size
    padded = (g + (-g) % ws) ** 2 if ws else 0
    # queries of each windowed block: its K, or N for block 0 when it attends before pruning
    windowed = [
        n if prune_from == "block0-mlp" and b == 0 else ks[b]
        for b in range(cfg.depth)
        if not cfg.is_global(b)
    ]
    if convention == "paper":
        window_rows = rel_rows = [padded] * len(windowed)
    else:
        rows_and_tiles = [window_tiles(ws * ws, padded // (ws * ws), q) for q in windowed]
        window_rows = rel_rows = [r * t for r, t in rows_and_tiles]
    attention = sum(2 * ks[b] * n * c for b in globals_) + sum(
        2 * r * ws * ws * c for r in window_rows
    )
    rel_pos = 0.0
    if cfg.use_rel_pos:
        rel_pos = sum(2 * ks[b] * c * (2 * g - 1) for b in globals_) + sum(
            2 * r * c * (2 * ws - 1) for r in rel_rows
        )
    dense = min(ks) == n
    return FrameMACs(
        patch_embed=float(n * c * cfg.in_chans * cfg.patch_size**2),
        token_wise=float(token_wise),
        attention=float(attention),
        rel_pos=float(rel_pos),
        tracking=0.0 if dense else float(n * (2 * radius + 1) ** 2 * c),
        rollout=float(len(globals_) * n * n),
        neck_head=neck_head_macs(head) if head is not None else 0.0,
    )


def schedule_macs(
    cfg: BackboneConfig,
    k: int | Sequence[int] | None,
    reset_every: int = 8,
    radius: int = 1,
    head: DetectorConfig | None = None,
    prune_from: str = "input",
    convention: str = "paper",
    stages: Sequence[Sequence[int]] | None = None,
) -> FrameMACs:
    """Average MACs per frame over a reset schedule: one dense frame every `reset_every`
    (k: one K, or a keep schedule as `frame_macs`)."""
    dense = frame_macs(cfg, None, radius, head, convention=convention)
    if min(block_keeps(cfg, k, stages)) == cfg.num_tokens or reset_every == 1:
        return dense
    if reset_every < 1:
        raise ValueError("reset_every must be >= 1 for an average over the schedule")
    pruned = frame_macs(cfg, k, radius, head, prune_from, convention, stages)
    w = 1.0 / reset_every
    return FrameMACs.mix([(w, dense), (1.0 - w, pruned)])
