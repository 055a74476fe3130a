"""Model configurations: plain dataclasses that say everything a model needs to be built."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from rgtp.core.checks import check_int, check_real


class EncoderGeometry:
    """What a ViT encoder's config derives from its fields `img_size`, `patch_size`,
    `embed_dim`, `num_heads` (each family's encoder config has them)."""

    img_size: int
    patch_size: int
    embed_dim: int
    num_heads: int

    def check_geometry(self) -> None:
        """ValueError unless the patches tile the input and the heads split the width."""
        if self.img_size % self.patch_size:
            raise ValueError(
                f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} not divisible by {self.num_heads} heads")

    @property
    def grid(self) -> int:
        """Tokens per side."""
        return self.img_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """N, the patch tokens of one frame or time step (prefix tokens not counted)."""
        return self.grid * self.grid

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


@dataclass(frozen=True)
class BackboneConfig(EncoderGeometry):
    """A ViTDet-style plain ViT backbone (the SAM / ViTDet image encoder trunk).

    `img_size` is the square input side in pixels; the token grid is img_size // patch_size
    on each side. `pretrain_grid` is the side of the stored absolute position embedding,
    which is interpolated (bicubic) to the token grid when the two differ.
    """

    img_size: int = 1024
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    use_rel_pos: bool = True
    window_size: int = 14
    global_blocks: tuple[int, ...] = (2, 5, 8, 11)
    pretrain_grid: int = 14
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        self.check_geometry()
        bad = [b for b in self.global_blocks if not 0 <= b < self.depth]
        if bad:
            raise ValueError(f"global_blocks {bad} outside 0..{self.depth - 1}")
        if self.window_size <= 0 and len(self.global_blocks) != self.depth:
            raise ValueError("window_size must be > 0 unless every block is global")

    def is_global(self, block: int) -> bool:
        return block in self.global_blocks

    @property
    def prefix_tokens(self) -> int:
        """Tokens before the patches that every block sees and pruning never drops (none)."""
        return 0


NOVELTIES = ("match", "cache")


@dataclass(frozen=True)
class PruningConfig:
    """The method's settings that depend on the model (defaults: the authors' ViTDet).

    rollout_blocks: global blocks rollout runs through; None means all of them.
    similarity: token-tracking match score, "dot" (the paper) or "cosine".
    novelty_share: share of K kept for the tokens whose content is newest (an rgtp
        extension; 0 is the paper's method), measured as `novelty` says.
    novelty: what a token's content is compared with: "match", the token the tracking matched
        it to in the previous step (content that arrived), or "cache", its own patch
        embedding when its cached keys and values were last computed (content that arrived
        or left since: the cache still shows an object that moved away, which nothing else
        refreshes; Eventful Transformers gate tokens by the same change).
    track_union: a token's tracked importance is the larger of its matched source's and its
        own previous one (an rgtp extension for sub-token motion, see `core.tracking.track`;
        False is the paper's method).
    target_threshold: boxes scoring above it define s_L.
    rollout_pool: rollout over attention rows average-pooled pool x pool on the token grid,
        importance upsampled bilinearly (the authors' `rollout_pool_size`; 1: unpooled). The
        buffered rows shrink by pool⁴.
    keep_previous: with unpooled rollout, a token not computed this frame keeps the previous
        frame's final importance instead of the one rollout gives it through its buffered
        attention row (the authors' 1024-px configurations, `core.rollout.keep_previous`;
        False is rgtp's: every token's importance is recomputed).
    off_grid: tracking's off-grid window cells, "skip" (rgtp) or "authors" (their zero
        padding, `core.tracking.OFF_GRID`).
    cache_free: the authors' ViViT pruning (`rgtp.models.cache_free_stage`): prune after block
        0's attention, later blocks run on the kept tokens only, no key/value caches; False is
        rgtp's cache method. Only for models with a CLS token.
    """

    rollout_blocks: tuple[int, ...] | None = None
    similarity: str = "dot"
    novelty_share: float = 0.0
    novelty: str = "match"
    track_union: bool = False
    target_threshold: float = 0.1
    rollout_pool: int = 1
    keep_previous: bool = False
    off_grid: str = "skip"
    cache_free: bool = False

    @classmethod
    def paper(
        cls, img_size: int, rollout_pool: int | None = None, cls_token: bool = False
    ) -> PruningConfig:
        """The authors' published settings at an input size.

        ViTDet (no `cls_token`): rollout through every global block with RMS head fusion
        (fusion lives in the stage plan), raw dot-product tracking with their off-grid rule,
        no rgtp extensions, s_L from boxes above 0.1. Their 672-px configurations pool the
        attention rows 2 x 2, their 1024-px ones do not and keep the previous frame's
        importance for tokens not computed; other sizes pool like 672 px unless told. Pair it
        with a plan exported `prune_from="block0-mlp"` (`rgtp export --paper`).

        ViViT (`cls_token`): their Kinetics-400 method, cache-free (`cache_free`), unpooled,
        raw dot-product tracking with their off-grid rule."""
        if cls_token:
            if rollout_pool not in (None, 1):
                raise ValueError("the authors' ViViT rollout is unpooled (rollout_pool 1)")
            return cls(off_grid="authors", cache_free=True)
        if rollout_pool is None:
            rollout_pool = 1 if img_size >= 1024 else 2
        return cls(rollout_pool=rollout_pool, keep_previous=rollout_pool == 1, off_grid="authors")

    def __post_init__(self) -> None:
        if self.rollout_blocks is not None:
            if not isinstance(self.rollout_blocks, tuple | list) or not self.rollout_blocks:
                raise ValueError(
                    "rollout_blocks must be a non-empty sequence of global block indices, or "
                    f"None for all global blocks; got {self.rollout_blocks!r}"
                )
            blocks = tuple(check_int("a rollout block", b, 0) for b in self.rollout_blocks)
            object.__setattr__(self, "rollout_blocks", blocks)  # frozen configs hold tuples
        if self.similarity not in ("dot", "cosine"):
            raise ValueError(f"similarity must be dot or cosine, got {self.similarity!r}")
        check_real("novelty_share", self.novelty_share, 0.0, 1.0, high_open=True)
        if self.novelty not in NOVELTIES:
            raise ValueError(f"novelty must be one of {NOVELTIES}, got {self.novelty!r}")
        if not isinstance(self.track_union, bool):
            raise ValueError(f"track_union must be True or False, got {self.track_union!r}")
        # Scores are probabilities: a threshold of 1 lets no box through (uniform s_L).
        check_real("target_threshold", self.target_threshold, 0.0, 1.0)
        check_int("rollout_pool", self.rollout_pool, 1)
        for name in ("keep_previous", "cache_free"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.off_grid not in ("skip", "authors"):
            raise ValueError(f"off_grid must be skip or authors, got {self.off_grid!r}")
        if self.keep_previous and self.rollout_pool > 1:
            raise ValueError("keep_previous is for unpooled rollout (rollout_pool 1)")
        if self.cache_free and (self.rollout_pool > 1 or self.novelty_share > 0):
            raise ValueError(
                "cache_free is the authors' ViViT method: unpooled rollout, no novelty share"
            )

    def blocks(self, global_blocks: tuple[int, ...]) -> list[int]:
        """The blocks rollout runs through for a backbone with these global blocks, sorted;
        ValueError if a chosen block is not global (only those keep fused attention rows)."""
        chosen = sorted(global_blocks if self.rollout_blocks is None else self.rollout_blocks)
        bad = sorted(set(chosen) - set(global_blocks))
        if bad:
            raise ValueError(f"rollout blocks {bad} are not global blocks {global_blocks}")
        return chosen


def check_family(cls: Any, data: dict[str, Any]) -> None:
    """A config dictionary names its family (dictionaries from before families: detection)."""
    got = data.get("family", "detection")
    if got != cls.family:
        raise ValueError(f"a {got} model's config, expected a {cls.family} model's")


def dataclass_from_dict(cls: type, data: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    # JSON turns tuples into lists; frozen configs hold tuples so they stay hashable.
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
