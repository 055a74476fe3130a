"""The stage plan: how a model's encoder is cut for pruned execution, and every graph's
interface.

The plan fixes graph names, tensor names, shapes and dtypes, so the exporter, every engine
backend and the runtime agree without talking to each other. What it needs of the model is
its config's `encoder` (depth, grid, width, which blocks are global, `prefix_tokens`) and
its family (`rgtp.package.family`), which names the graphs around the stages.

Token rows: an encoder sees `prefix_tokens` E tokens (ViViT's CLS: 1; ViTDet: 0) before its
N patch tokens. The prefix is always kept and not counted in K, so a stage at bucket K runs
E + K rows, its caches hold E + N rows, and `keep` indexes those E + N rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rgtp.core.checks import check_int
from rgtp.core.rollout import FUSIONS
from rgtp.core.selection import check_buckets, check_schedule
from rgtp.package.family import Family, FamilyConfig, config_from_dict, family_of

PARTITIONS = ("per-global", "per-block", "whole")
# Where pruning starts: at the input (every block sees K tokens), or, as the authors' ViTDet
# configurations do, after block 0's attention (block 0 attends over all N tokens; its MLP
# and every later block see K).
PRUNE_FROM = ("input", "block0-mlp")


def partition_blocks(cfg: Any, how: str) -> list[tuple[int, ...]]:
    """Split blocks 0..depth-1 of encoder config `cfg` into consecutive stages.

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
        return tuple(axis_size(d, dims) for d in self.shape)


def symbolic_axis(name: str, offset: int) -> str:
    """A symbolic axis `offset` larger than axis `name` ("K+1"), or `name` itself for 0."""
    return f"{name}+{offset}" if offset else name


def axis_size(axis: int | str, dims: Mapping[str, int]) -> int:
    """The size of an axis: an int, a symbol in `dims` ("K"), or a symbol plus an offset."""
    if isinstance(axis, int):
        return axis
    name, _, offset = axis.partition("+")
    return dims[name] + int(offset or 0)


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

    def retyped(self, like: GraphSpec) -> GraphSpec:
        """This spec with the dtypes `like` gives its tensors of the same names: a plan's
        stage spec as the package's graph at that stage declares it (a static int8 package
        holds its caches in int8, `export.int8_caches`)."""
        types = {t.name: t.dtype for t in (*like.inputs, *like.outputs)}

        def own(ts: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
            return tuple(dataclasses.replace(t, dtype=types.get(t.name, t.dtype)) for t in ts)

        return dataclasses.replace(self, inputs=own(self.inputs), outputs=own(self.outputs))

    def symbolic_dims(self, shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
        """Sizes of the symbolic axes (e.g. {"K": 77}) read off the shapes of the inputs."""
        dims: dict[str, int] = {}
        for t in self.inputs:
            for axis, d in enumerate(t.shape):
                if isinstance(d, str):
                    name, _, offset = d.partition("+")
                    dims.setdefault(name, int(shapes[t.name][axis]) - int(offset or 0))
        return dims


# The stage graphs' leading axis: the streams that run a stage call together (one for a
# stream alone). Symbolic in every stage graph; TensorRT profiles span 1..`max_batch`.
BATCH = "B"


def stage_graph_name(stage: int, k: int | str) -> str:
    return f"stage{stage}_k{k}"


@dataclass(frozen=True)
class StagePlan:
    config: FamilyConfig
    stages: tuple[tuple[int, ...], ...]
    buckets: tuple[int, ...]
    fusion: str = "rms"
    prune_from: str = "input"
    head: str = "rgtp"
    user_head: GraphSpec | None = None  # head "onnx": the user graph's interface
    # The global blocks whose stage graphs return attention rows, the only ones a stream can
    # roll out through; None: every global block (plans from before this field).
    rollout_blocks: tuple[int, ...] | None = None
    # Each stage's own K buckets, for keep schedules (one K per stage): each holds `buckets`
    # (the K every stage has) and more; None: every stage has `buckets` only.
    stage_buckets: tuple[tuple[int, ...], ...] | None = None
    # The most streams one stage call runs (`BATCH`): the runtime splits larger groups, and
    # TensorRT profiles are built for 1..max_batch.
    max_batch: int = 8

    def __post_init__(self) -> None:
        enc = self.encoder
        check_int("max_batch", self.max_batch, 1)
        rows = enc.global_blocks if self.rollout_blocks is None else self.rollout_blocks
        if not rows or not set(rows) <= set(enc.global_blocks):
            raise ValueError(
                f"rollout blocks {list(rows)}: choose one or more of the global blocks "
                f"{list(enc.global_blocks)}"
            )
        object.__setattr__(self, "rollout_blocks", tuple(sorted(set(rows))))
        covered = [b for s in self.stages for b in s]
        if covered != list(range(enc.depth)):
            raise ValueError(f"stages {self.stages} do not cover blocks 0..depth-1 in order")
        if self.fusion not in FUSIONS:
            raise ValueError(f"unknown head fusion {self.fusion!r}; choose from {FUSIONS}")
        if self.prune_from not in PRUNE_FROM:
            raise ValueError(f"unknown prune_from {self.prune_from!r}; choose from {PRUNE_FROM}")
        if self.cache_free:
            self._check_cache_free()
        elif self.prune_from == "block0-mlp" and enc.is_global(0):
            # a global block 0 would need (N, N) attention rows from every frame
            raise ValueError("prune_from='block0-mlp' needs a windowed block 0")
        if self.head not in self.family.heads:
            raise ValueError(
                f"unknown head {self.head!r} for a {self.family.name} model; choose from "
                f"{self.family.heads}"
            )
        if (self.head == "onnx") != (self.user_head is not None):
            raise ValueError("a user head interface goes with head='onnx', and only with it")
        self.family.check_plan(self)
        object.__setattr__(self, "buckets", check_buckets(self.buckets, self.num_tokens))
        if self.stage_buckets is not None:
            if len(self.stage_buckets) != len(self.stages):
                raise ValueError(
                    f"{len(self.stage_buckets)} sets of stage buckets for {len(self.stages)} stages"
                )
            own = tuple(
                check_buckets((*self.buckets, *b), self.num_tokens) for b in self.stage_buckets
            )
            # the same plan whether its extra stage buckets are spelt out or not
            extra = any(b != self.buckets for b in own)
            object.__setattr__(self, "stage_buckets", own if extra else None)

    def _check_cache_free(self) -> None:
        """A cache-free plan (the authors' ViViT pruning) is one stage of every block that
        prunes after block 0's attention, rolls out through every block and keeps a prefix
        (the CLS: its output is the only row kept up to date)."""
        enc = self.encoder
        why = []
        if not self.prefix:
            why.append("a prefix (CLS) token, whose output is the prediction's input")
        if len(self.stages) != 1:
            why.append(f"one stage of every block (partition 'whole'), not {len(self.stages)}")
        if self.prune_from != "block0-mlp":
            why.append("pruning after block 0's attention (prune_from='block0-mlp')")
        if set(enc.global_blocks) != set(range(enc.depth)) or self.rollout_blocks != tuple(
            range(enc.depth)
        ):
            why.append("global blocks only, every one of them rolled out through")
        if self.stage_buckets is not None:
            why.append("no keep schedules (one stage)")
        if why:
            raise ValueError(
                "cache-free pruning (the authors' ViViT method) needs " + "; ".join(why)
            )

    @property
    def cache_free(self) -> bool:
        """Pruning without key/value caches (`PruningConfig.cache_free`, the authors' ViViT
        method): the dropped tokens leave attention; the stage returns block 0's attention
        rows of the kept queries over every token, each later block's among the kept, and
        block 0's keys averaged over heads (what a dropped token's importance is filled by)."""
        return bool(getattr(self.config.pruning, "cache_free", False))

    @classmethod
    def create(
        cls,
        config: FamilyConfig,
        buckets: Sequence[int],
        partition: str | None = None,
        fusion: str = "rms",
        prune_from: str | None = None,
        head: str = "rgtp",
        user_head: GraphSpec | None = None,
        rollout_blocks: Sequence[int] | None = None,
        schedules: Sequence[Sequence[int]] = (),
        max_batch: int = 8,
    ) -> StagePlan:
        """`rollout_blocks`: the global blocks whose attention rows the stages return; None:
        those the model's own pruning settings roll out through (`config.pruning`).
        `schedules`: keep schedules (one K per stage) whose K each stage also gets.
        `max_batch`: the most streams one stage call runs. `partition`, `prune_from`: None
        for the model's method: "whole" and "block0-mlp" for a cache-free one
        (`cache_free`), else "per-global" and "input"."""
        cache_free = bool(getattr(config.pruning, "cache_free", False))
        if partition is None:
            partition = "whole" if cache_free else "per-global"
        if prune_from is None:
            prune_from = "block0-mlp" if cache_free else "input"
        if rollout_blocks is None:
            rollout_blocks = config.pruning.blocks(config.encoder.global_blocks)
        stages = tuple(partition_blocks(config.encoder, partition))
        for schedule in schedules:
            check_schedule(schedule, len(stages), config.encoder.num_tokens)
        stage_buckets = (
            tuple(tuple(s[i] for s in schedules) for i in range(len(stages))) if schedules else None
        )
        return cls(
            config,
            stages,
            tuple(buckets),
            fusion,
            prune_from,
            head,
            user_head,
            tuple(rollout_blocks),
            stage_buckets,
            max_batch,
        )

    @property
    def family(self) -> Family:
        """What is particular to the model's family: the graphs around the stages."""
        return family_of(self.config)

    @property
    def encoder(self) -> Any:
        """The encoder's config (`BackboneConfig`, `SpatialConfig`): the blocks pruned."""
        return self.config.encoder

    @property
    def num_tokens(self) -> int:
        """N, the patch tokens; K counts among them."""
        return self.encoder.num_tokens

    @property
    def prefix(self) -> int:
        """E, the tokens before the patches that are always kept (ViViT's CLS)."""
        return self.encoder.prefix_tokens

    def rows(self, k: int | str) -> int | str:
        """Rows a stage runs at bucket k: the prefix and the k kept patch tokens."""
        return symbolic_axis(k, self.prefix) if isinstance(k, str) else self.prefix + k

    def buckets_of(self, stage: int) -> tuple[int, ...]:
        """The K buckets stage `stage` has graphs for, sorted: `buckets` and its own."""
        return self.buckets if self.stage_buckets is None else self.stage_buckets[stage]

    @property
    def dim(self) -> int:
        return self.encoder.embed_dim

    @property
    def global_blocks(self) -> tuple[int, ...]:
        return self.encoder.global_blocks

    def embed_spec(self) -> GraphSpec:
        """The embed graph: pixels -> patches z_0 (N, C) for tracking, tokens (E + N, C)."""
        return self.family.embed_spec(self)

    def head_spec(self) -> GraphSpec:
        """The head graph's interface; ValueError for a plan exported without a head."""
        if self.head == "none":
            raise ValueError("this plan has no head (exported with --head none)")
        return self.family.head_spec(self)

    def extra_specs(self) -> dict[str, GraphSpec]:
        """The family's further graphs (ViViT's temporal transformer), by name."""
        return self.family.extra_specs(self)

    @property
    def dense_block(self) -> int | None:
        """The block whose attention runs over all N tokens on every frame (no caches)."""
        return 0 if self.prune_from == "block0-mlp" else None

    def takes_all_tokens(self, stage: int) -> bool:
        """Whether the stage's `tokens` input holds all N tokens rather than the K kept."""
        return self.dense_block is not None and self.dense_block in self.stages[stage]

    def cached_blocks(self, stage: int) -> tuple[int, ...]:
        """The blocks of a stage that read and refresh key/value caches."""
        if self.cache_free:
            return ()
        return tuple(b for b in self.stages[stage] if b != self.dense_block)

    def row_blocks(self, stage: int) -> tuple[int, ...]:
        """The blocks of a stage that return their attention rows (`rollout_blocks`)."""
        assert self.rollout_blocks is not None  # set by __post_init__
        if self.cache_free:
            return self.stages[stage]
        return tuple(b for b in self.cached_blocks(stage) if b in self.rollout_blocks)

    def cache_io(self, stage: int) -> dict[str, str]:
        """A stage graph's cache inputs, each with the output of its fresh rows (keys then
        values of each cached block, in call order)."""
        return {
            f"{kv}_cache_{b}": f"{kv}_new_{b}" for b in self.cached_blocks(stage) for kv in "kv"
        }

    def stage_spec(self, stage: int, k: int | str) -> GraphSpec:
        """Interface of stage `stage` at K = k (an int, or a str for a symbolic K axis)."""
        n, c = self.prefix + self.num_tokens, self.dim
        m = self.rows(k)
        first = n if self.takes_all_tokens(stage) else m
        b_ = BATCH  # every stage input and output leads with the streams batched together
        inputs = [
            TensorSpec("tokens", (b_, first, c), "float32"),
            TensorSpec("keep", (b_, m), "int64"),
        ]
        outputs = [TensorSpec("tokens_out", (b_, m, c), "float32")]
        for cache, fresh in self.cache_io(stage).items():
            inputs.append(TensorSpec(cache, (b_, n, c), "float32"))
            outputs.append(TensorSpec(fresh, (b_, m, c), "float32"))
        if self.cache_free:  # block 0's rows over every token, the later blocks' among the kept
            outputs += [
                TensorSpec(f"attn_{b}", (b_, m, n if b == self.dense_block else m), "float32")
                for b in self.row_blocks(stage)
            ]
            heads = self.encoder.num_heads
            outputs.append(TensorSpec("keys_0", (b_, self.num_tokens, c // heads), "float32"))
            return GraphSpec(stage_graph_name(stage, k), tuple(inputs), tuple(outputs))
        outputs += [TensorSpec(f"attn_{b}", (b_, m, n), "float32") for b in self.row_blocks(stage)]
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
            "rollout_blocks": list(self.rollout_blocks or ()),
            **(
                {"stage_buckets": [list(b) for b in self.stage_buckets]}
                if self.stage_buckets
                else {}
            ),
            "max_batch": self.max_batch,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StagePlan:
        return cls(
            config_from_dict(data["config"]),
            tuple(tuple(s) for s in data["stages"]),
            tuple(data["buckets"]),
            data["fusion"],
            data.get("prune_from", "input"),
            data.get("head", "rgtp"),
            GraphSpec.from_dict(data["user_head"]) if data.get("user_head") else None,
            tuple(data["rollout_blocks"]) if "rollout_blocks" in data else None,
            tuple(tuple(b) for b in data["stage_buckets"]) if "stage_buckets" in data else None,
            data["max_batch"],
        )
