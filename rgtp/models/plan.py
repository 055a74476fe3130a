"""The stage plan: how a detector is cut for pruned execution, and every graph's interface.

The plan fixes graph names, tensor names, shapes and dtypes, so the exporter, every engine
backend and the runtime agree without talking to each other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rgtp.core.rollout import FUSIONS
from rgtp.core.selection import check_buckets
from rgtp.models.config import BackboneConfig, DetectorConfig

PARTITIONS = ("per-global", "per-block", "whole")
# Where pruning starts: at the input (every block sees K tokens), or, as the authors' ViTDet
# configurations do, after block 0's attention (block 0 attends over all N tokens; its MLP
# and every later block see K).
PRUNE_FROM = ("input", "block0-mlp")


def partition_blocks(cfg: BackboneConfig, how: str) -> list[tuple[int, ...]]:
    """Split blocks 0..depth-1 into consecutive stages.

    "per-global": each stage ends at a global block (trailing windowed blocks form a last
    stage); "per-block": one block per stage; "whole": one stage.
    """
    blocks = list(range(cfg.depth))
    if how == "whole":
        return [tuple(blocks)]
    if how == "per-block":
        return [(b,) for b in blocks]
    if how == "per-global":
        stages, current = [], []
        for b in blocks:
            current.append(b)
            if cfg.is_global(b):
                stages.append(tuple(current))
                current = []
        if current:
            stages.append(tuple(current))
        return stages
    raise ValueError(f"unknown stage partition {how!r}; choose from {PARTITIONS}")


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. A str in `shape` is a symbolic axis (e.g. "K")."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(d["name"], tuple(d["shape"]), d["dtype"])

    def concrete(self, dims: Mapping[str, int]) -> tuple[int, ...]:
        """The shape with every symbolic axis replaced by its size in `dims`."""
        return tuple(dims[d] if isinstance(d, str) else d for d in self.shape)


@dataclass(frozen=True)
class GraphSpec:
    """A graph's name and its inputs and outputs, in call order."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def symbolic_dims(self, shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
        """Sizes of the symbolic axes (e.g. {"K": 77}) read off the shapes of the inputs."""
        dims: dict[str, int] = {}
        for t in self.inputs:
            for axis, d in enumerate(t.shape):
                if isinstance(d, str):
                    dims.setdefault(d, int(shapes[t.name][axis]))
        return dims


def stage_graph_name(stage: int, k: int | str) -> str:
    return f"stage{stage}_k{k}"


@dataclass(frozen=True)
class StagePlan:
    config: DetectorConfig
    stages: tuple[tuple[int, ...], ...]
    buckets: tuple[int, ...]
    fusion: str = "rms"
    prune_from: str = "input"

    def __post_init__(self) -> None:
        covered = [b for s in self.stages for b in s]
        if covered != list(range(self.config.backbone.depth)):
            raise ValueError(f"stages {self.stages} do not cover blocks 0..depth-1 in order")
        if self.fusion not in FUSIONS:
            raise ValueError(f"unknown head fusion {self.fusion!r}; choose from {FUSIONS}")
        if self.prune_from not in PRUNE_FROM:
            raise ValueError(f"unknown prune_from {self.prune_from!r}; choose from {PRUNE_FROM}")
        if self.prune_from == "block0-mlp" and self.config.backbone.is_global(0):
            # a global block 0 would need (N, N) attention rows from every frame
            raise ValueError("prune_from='block0-mlp' needs a windowed block 0")
        object.__setattr__(self, "buckets", check_buckets(self.buckets, self.num_tokens))

    @classmethod
    def create(
        cls,
        config: DetectorConfig,
        buckets: Sequence[int],
        partition: str = "per-global",
        fusion: str = "rms",
        prune_from: str = "input",
    ) -> StagePlan:
        return cls(
            config,
            tuple(partition_blocks(config.backbone, partition)),
            tuple(buckets),
            fusion,
            prune_from,
        )

    @property
    def num_tokens(self) -> int:
        return self.config.backbone.num_tokens

    @property
    def dim(self) -> int:
        return self.config.backbone.embed_dim

    @property
    def global_blocks(self) -> tuple[int, ...]:
        return self.config.backbone.global_blocks

    @property
    def num_locations(self) -> int:
        """M, the number of head locations over all pyramid levels."""
        b = self.config.backbone
        return sum((b.grid * int(s * 4) // 4) ** 2 for s in self.config.head.scale_factors)

    def embed_spec(self) -> GraphSpec:
        s, n, c = self.config.backbone.img_size, self.num_tokens, self.dim
        return GraphSpec(
            "embed",
            (TensorSpec("frame", (1, 3, s, s), "float32"),),
            (TensorSpec("patches", (n, c), "float32"), TensorSpec("tokens", (n, c), "float32")),
        )

    def head_spec(self) -> GraphSpec:
        n, c, m = self.num_tokens, self.dim, self.num_locations
        return GraphSpec(
            "head",
            (TensorSpec("out_map", (n, c), "float32"),),
            (
                TensorSpec("boxes", (m, 4), "float32"),
                TensorSpec("scores", (m, self.config.head.num_classes), "float32"),
            ),
        )

    @property
    def dense_block(self) -> int | None:
        """The block whose attention runs over all N tokens on every frame (no caches)."""
        return 0 if self.prune_from == "block0-mlp" else None

    def takes_all_tokens(self, stage: int) -> bool:
        """Whether the stage's `tokens` input holds all N tokens rather than the K kept."""
        return self.dense_block is not None and self.dense_block in self.stages[stage]

    def cached_blocks(self, stage: int) -> tuple[int, ...]:
        """The blocks of a stage that read and refresh key/value caches."""
        return tuple(b for b in self.stages[stage] if b != self.dense_block)

    def stage_spec(self, stage: int, k: int | str) -> GraphSpec:
        """Interface of stage `stage` at K = k (an int, or a str for a symbolic K axis)."""
        n, c = self.num_tokens, self.dim
        blocks = self.cached_blocks(stage)
        first = n if self.takes_all_tokens(stage) else k
        inputs = [TensorSpec("tokens", (first, c), "float32"), TensorSpec("keep", (k,), "int64")]
        outputs = [TensorSpec("tokens_out", (k, c), "float32")]
        for b in blocks:
            inputs += [
                TensorSpec(f"k_cache_{b}", (n, c), "float32"),
                TensorSpec(f"v_cache_{b}", (n, c), "float32"),
            ]
            outputs += [
                TensorSpec(f"k_new_{b}", (k, c), "float32"),
                TensorSpec(f"v_new_{b}", (k, c), "float32"),
            ]
        outputs += [
            TensorSpec(f"attn_{b}", (k, n), "float32")
            for b in blocks
            if self.config.backbone.is_global(b)
        ]
        return GraphSpec(stage_graph_name(stage, k), tuple(inputs), tuple(outputs))

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "stages": [list(s) for s in self.stages],
            "buckets": list(self.buckets),
            "fusion": self.fusion,
            "prune_from": self.prune_from,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StagePlan:
        return cls(
            DetectorConfig.from_dict(data["config"]),
            tuple(tuple(s) for s in data["stages"]),
            tuple(data["buckets"]),
            data["fusion"],
            data.get("prune_from", "input"),
        )
