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
# What turns the maintained backbone map into boxes and scores: rgtp's own FCOS head, a
# user's ONNX head (its interface read from the file at export), or none (the application
# runs its own head and hands the runtime its detections).
HEADS = ("rgtp", "onnx", "none")


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GraphSpec:
        return cls(
            d["name"],
            tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
            tuple(TensorSpec.from_dict(t) for t in d["outputs"]),
        )

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
    head: str = "rgtp"
    user_head: GraphSpec | None = None  # head "onnx": the user graph's interface

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
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; choose from {HEADS}")
        if (self.head == "onnx") != (self.user_head is not None):
            raise ValueError("a user head interface goes with head='onnx', and only with it")
        if self.user_head is not None:
            check_user_head(self.user_head, self.config.backbone.grid, self.dim)
        object.__setattr__(self, "buckets", check_buckets(self.buckets, self.num_tokens))

    @classmethod
    def create(
        cls,
        config: DetectorConfig,
        buckets: Sequence[int],
        partition: str = "per-global",
        fusion: str = "rms",
        prune_from: str = "input",
        head: str = "rgtp",
        user_head: GraphSpec | None = None,
    ) -> StagePlan:
        return cls(
            config,
            tuple(partition_blocks(config.backbone, partition)),
            tuple(buckets),
            fusion,
            prune_from,
            head,
            user_head,
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
        """The head graph's interface; ValueError for a plan exported without a head."""
        if self.head == "none":
            raise ValueError("this plan has no head (exported with --head none)")
        if self.user_head is not None:
            return GraphSpec("head", self.user_head.inputs, self.user_head.outputs)
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
            "head": self.head,
            **({"user_head": self.user_head.to_dict()} if self.user_head else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StagePlan:
        return cls(
            DetectorConfig.from_dict(data["config"]),
            tuple(tuple(s) for s in data["stages"]),
            tuple(data["buckets"]),
            data["fusion"],
            data.get("prune_from", "input"),
            data.get("head", "rgtp"),
            GraphSpec.from_dict(data["user_head"]) if data.get("user_head") else None,
        )


def check_user_head(spec: GraphSpec, grid: int, dim: int) -> None:
    """A user's head graph must read the backbone map, as (N, C) or (1, C, H, W), and give
    boxes (M, 4) and scores (M, classes) first, each optionally with a leading batch of 1."""
    accepted = [(grid * grid, dim), (1, dim, grid, grid)]
    if len(spec.inputs) != 1 or tuple(spec.inputs[0].shape) not in accepted:
        got = [(t.name, tuple(t.shape)) for t in spec.inputs]
        raise ValueError(
            f"a user head takes one float32 input, the backbone map of shape {accepted[0]} or "
            f"{accepted[1]}; this graph takes {got}"
        )
    if len(spec.outputs) < 2:
        raise ValueError("a user head returns boxes (M, 4) and scores (M, classes) first")
    boxes, scores = (_unbatched(t) for t in spec.outputs[:2])
    if len(boxes) != 2 or boxes[1] != 4 or len(scores) != 2 or boxes[0] != scores[0]:
        raise ValueError(
            "a user head's first two outputs must be boxes (M, 4) in model-input pixels and "
            f"scores (M, classes); got {tuple(spec.outputs[0].shape)} and "
            f"{tuple(spec.outputs[1].shape)}"
        )
    if any(t.dtype != "float32" for t in (*spec.inputs, *spec.outputs[:2])):
        raise ValueError("a user head's map input and box/score outputs must be float32")


def _unbatched(t: TensorSpec) -> tuple[int | str, ...]:
    shape = tuple(t.shape)
    return shape[1:] if len(shape) == 3 and shape[0] == 1 else shape
