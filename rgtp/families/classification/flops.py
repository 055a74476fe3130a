"""Analytic multiply-accumulate counts of the ViViT factorised encoder, per view.

The paper's "FLOPs" are multiply-accumulates (`rgtp.families.detection.flops` counts the
detector the same way). Counted here: the tubelet embedding (N tokens x C outputs x 3·t·p²
inputs per time step); per transformer block on M query tokens against M' keys, qkv 3C²,
projection C², MLP 2·C·hidden per query token and QKᵀ plus AV 2·M·M'·C; the classifier C·L.
The spatial encoder runs every time step on the CLS token plus the K kept patch tokens as
queries against all 1 + N keys (K = N dense); the temporal transformer runs on 1 + s tokens.
Norms, softmax, GELU, biases and residual adds are not counted (about 0.1 % of the total).

A view is one clip of `num_frames` frames at one crop. ViViT's Kinetics-400 figure is per
video over 4 temporal clips x 3 spatial crops (`KINETICS_VIEWS`), i.e. 12 views; the authors'
EPIC-Kitchens config inherits the same views. `vivit-b` dense: 283.3 GMACs a view, 3.400
TMACs a video against the published 3.36 (+1.2 %); `vivit-b-epic` (320 px): 600.4 GMACs a
view, 7.205 TMACs a video against the published 7.12 (+1.2 %). The authors' counter
instruments the transformer's linear layers and matmuls (and counts their biases and
residual adds, one per element) but not the tubelet embedding, a plain Conv3d: without it
this count gives 3.356 and 7.114 TMACs a video (-0.1 % each).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from rgtp.families.classification.config import SpatialConfig, ViViTConfig

KINETICS_VIEWS = (4, 3)  # temporal clips x spatial crops per video, ViViT's test protocol

# The paper's dense figures, TFLOPs (multiply-accumulates x 1e12) per video over
# `KINETICS_VIEWS`, for the named configs that are the authors' models.
PAPER_DENSE_TMACS_PER_VIDEO = {"vivit-b": 3.36, "vivit-b-epic": 7.12}


@dataclass(frozen=True)
class ViewMACs:
    """MACs of one view by part; `total` is the paper's quantity."""

    patch_embed: float  # tubelet embedding, all time steps
    spatial: float  # spatial encoder blocks, all time steps
    temporal: float  # temporal transformer and classifier

    @property
    def total(self) -> float:
        return self.patch_embed + self.spatial + self.temporal

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "total": self.total}


def block_macs(queries: int, keys: int, dim: int, hidden: int) -> float:
    """One pre-norm transformer block: token-wise work on `queries` tokens (qkv, projection,
    MLP), and their attention to `keys` keys (QKᵀ and AV)."""
    return float(queries * (4 * dim * dim + 2 * dim * hidden) + 2 * queries * keys * dim)


def step_macs(cfg: SpatialConfig, k: int | None = None) -> tuple[float, float]:
    """(tubelet embedding, spatial blocks) MACs of one time step keeping k of the N patch
    tokens (None: all N).

    The CLS token is always computed and not counted in K. The embedding runs on all N
    tokens: tracking matches every token's z_0.
    """
    n, c = cfg.num_tokens, cfg.embed_dim
    k = n if k is None else k
    if not 0 < k <= n:
        raise ValueError(f"K must be in 1..{n}, got {k}")
    embed = n * c * cfg.in_chans * cfg.tubelet * cfg.patch_size**2
    blocks = cfg.depth * block_macs(1 + k, 1 + n, c, int(c * cfg.mlp_ratio))
    return float(embed), blocks


def cache_free_step_macs(cfg: SpatialConfig, k: int) -> tuple[float, float]:
    """(tubelet embedding, spatial blocks) MACs of one time step of the authors' cache-free
    method keeping k patch tokens (`rgtp.models.cache_free_stage`): block 0's qkv, attention
    and projection run on all 1 + N tokens, its MLP and every later block on the 1 + k kept,
    which attend only to each other (no caches). k = N is the dense step."""
    n, c = cfg.num_tokens, cfg.embed_dim
    hidden = int(c * cfg.mlp_ratio)
    embed, _ = step_macs(cfg, k)
    first = (1 + n) * 4 * c * c + 2 * (1 + n) ** 2 * c + (1 + k) * 2 * c * hidden
    later = (cfg.depth - 1) * block_macs(1 + k, 1 + k, c, hidden)
    return embed, float(first + later)


def view_macs(
    cfg: ViViTConfig,
    k: int | None = None,
    reset_every: int = 8,
    reset_k: int | None = None,
    cache_free: bool = False,
) -> ViewMACs:
    """MACs of one view: `num_steps` time steps of the spatial encoder, then the temporal
    transformer and classifier.

    Dense when `k` is None. Otherwise a view is one stream: its first time step runs every
    token, the later reset steps R, 2R, ... (R = `reset_every`) keep `reset_k` patch tokens
    (None: all N, a dense reset; ceil(N/2): the authors' checkerboard reset) and the others
    keep `k`. `cache_free`: the authors' cache-free method (`cache_free_step_macs`), else
    rgtp's cache method (`step_macs`).
    """
    if reset_every < 1:
        raise ValueError(f"reset_every must be >= 1, got {reset_every}")
    sp, tm = cfg.spatial, cfg.temporal
    one_step = cache_free_step_macs if cache_free else step_macs
    embed = spatial = 0.0
    for step in range(cfg.num_steps):
        if k is None or step == 0:
            kept = sp.num_tokens
        elif step % reset_every == 0:
            kept = sp.num_tokens if reset_k is None else reset_k
        else:
            kept = k
        e, s = one_step(sp, kept)
        embed, spatial = embed + e, spatial + s
    c = sp.embed_dim
    tokens = 1 + cfg.num_steps
    temporal = tm.depth * block_macs(tokens, tokens, c, int(c * tm.mlp_ratio))
    return ViewMACs(embed, spatial, temporal + c * cfg.num_classes)
