"""A third model family, defined here and registered through the public interface
(`rgtp.families.register_family`), goes through export, `rgtp check`, the ONNX Runtime
pipeline and K = N ≡ dense without a shared module knowing of it: a 2-block ViT with a CLS
token and a linear classifier on one frame a step."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from rgtp.core.rollout import cls_target
from rgtp.core.selection import FixedKeep
from rgtp.eval.heldout import synthetic_frames
from rgtp.export.check import check_package
from rgtp.export.package import export_package
from rgtp.families import (
    GraphRunner,
    Prediction,
    StepResult,
    family_named,
    get_config,
    register_family,
    tool,
    weight_formats,
)
from rgtp.models.config import PruningConfig
from rgtp.package.plan import GraphSpec, StagePlan, TensorSpec
from rgtp.runtime import Pipeline

# --- the model: a few lines of nn ---------------------------------------------------------


@dataclass(frozen=True)
class ToyEncoder:
    """What the stage plan reads of an encoder: a 4 x 4 grid of 8-px patches, 2 global
    blocks, a CLS token before the patches."""

    img_size: int = 32
    patch_size: int = 8
    embed_dim: int = 32
    depth: int = 2
    num_heads: int = 2
    window_size: ClassVar[int] = 0
    prefix_tokens: ClassVar[int] = 1

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid**2

    @property
    def global_blocks(self) -> tuple[int, ...]:
        return tuple(range(self.depth))

    def is_global(self, block: int) -> bool:
        return 0 <= block < self.depth


@dataclass(frozen=True)
class ToyConfig:
    family: ClassVar[str] = "toy"
    name: str = "toy-vit"
    num_classes: int = 5
    encoder: ToyEncoder = field(default_factory=ToyEncoder)
    pixel_mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    pruning: PruningConfig = field(default_factory=PruningConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "name": self.name, "num_classes": self.num_classes}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ToyConfig:
        return cls(name=data["name"], num_classes=data["num_classes"])


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:  # (..., M, C) -> (..., h, M, d)
        return x.unflatten(-1, (self.num_heads, -1)).transpose(-3, -2)

    def bias(self, q: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> None:
        return None  # positions enter with the embedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (self.split_heads(t) for t in self.qkv(x).chunk(3, dim=-1))
        out = torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, -1) @ v
        return self.proj(out.transpose(-3, -2).flatten(-2))


class Block(nn.Module):
    window_size = 0

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.attn, self.norm2 = (
            nn.LayerNorm(dim),
            Attention(dim, heads),
            nn.LayerNorm(dim),
        )
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Encoder(nn.Module):
    def __init__(self, cfg: ToyEncoder) -> None:
        super().__init__()
        self.cfg, c = cfg, cfg.embed_dim
        self.patch = nn.Conv2d(3, c, cfg.patch_size, cfg.patch_size)
        self.cls = nn.Parameter(torch.randn(1, c) * 0.5)
        self.pos = nn.Parameter(torch.randn(1 + cfg.num_tokens, c) * 0.5)
        self.blocks = nn.ModuleList(Block(c, cfg.num_heads) for _ in range(cfg.depth))


class ToyViT(nn.Module):
    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__()
        self.cfg, self.vit = cfg, Encoder(cfg.encoder)
        self.norm = nn.LayerNorm(cfg.encoder.embed_dim)
        self.classifier = nn.Linear(cfg.encoder.embed_dim, cfg.num_classes)

    def embed(self, frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frame (1, 3, S, S) in [0, 255] -> patches (N, C), tokens (1 + N, C)."""
        patches = self.vit.patch(frame / 127.5 - 1).flatten(2)[0].t()
        return patches, torch.cat([self.vit.cls, patches]) + self.vit.pos

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """The encoder's output (1 + N, C) -> class logits (L,)."""
        return self.classifier(self.norm(tokens[0]))

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        x = self.embed(frame)[1]
        for block in self.vit.blocks:
            x = block(x)
        return self.logits(x)


# --- the family: what the shared layers ask of it -------------------------------------------


class Embed(nn.Module):
    def __init__(self, model: ToyViT) -> None:
        super().__init__()
        self.model = model

    def forward(self, frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.embed(frame)


class Head(nn.Module):
    def __init__(self, model: ToyViT) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.logits(tokens)


@dataclass
class ToyResult(StepResult):
    logits: torch.Tensor = field(kw_only=True)


@dataclass(frozen=True)
class ToyOptions:
    pass


class ToyTask:
    frames_per_step = 1

    def __init__(self, plan: StagePlan, options: Any) -> None:
        ToyOptions(**options.task)
        self.plan = plan

    def embed_feeds(self, frames):
        (frame,) = frames
        return {"frame": frame}

    def predict(self, out_map: torch.Tensor, run: GraphRunner, user_head: Any) -> Prediction:
        logits = run("head", {"tokens": out_map})["logits"]
        run.check_finite()
        rows = self.plan.prefix + self.plan.num_tokens
        return Prediction(logits, cls_target(rows, 0, out_map.device))  # s_L: the CLS row

    def commit(self, prediction: Prediction) -> None:
        pass

    def tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def result(self, common: dict[str, Any], prediction: Prediction, geometry: Any) -> ToyResult:
        return ToyResult(**common, logits=prediction.output)


class ToyFamily:
    name = "toy"
    config_type = ToyConfig
    configs: ClassVar[dict[str, ToyConfig]] = {"toy-vit": ToyConfig()}
    options_type = ToyOptions
    heads = ("rgtp",)

    def build(self, config: ToyConfig) -> ToyViT:
        return ToyViT(config)

    def load_weights(self, model: nn.Module, path: Path) -> None:
        model.load_state_dict(load_file(str(path)))

    def load_checkpoint(self, model: nn.Module, path: Path, fmt: str, strict: bool) -> Any:
        return model.load_state_dict(load_file(str(path)), strict=strict)

    def encoder(self, model: nn.Module) -> nn.Module:
        return model.vit

    def check_plan(self, plan: StagePlan) -> None:
        pass

    def embed_spec(self, plan: StagePlan) -> GraphSpec:
        s, n, c = plan.encoder.img_size, plan.num_tokens, plan.dim
        return GraphSpec(
            "embed",
            (TensorSpec("frame", (1, 3, s, s), "float32"),),
            (TensorSpec("patches", (n, c), "float32"), TensorSpec("tokens", (1 + n, c), "float32")),
        )

    def head_spec(self, plan: StagePlan) -> GraphSpec:
        n, c = plan.num_tokens, plan.dim
        return GraphSpec(
            "head",
            (TensorSpec("tokens", (1 + n, c), "float32"),),
            (TensorSpec("logits", (plan.config.num_classes,), "float32"),),
        )

    def extra_specs(self, plan: StagePlan) -> dict[str, GraphSpec]:
        return {}

    def modules(self, model: nn.Module, plan: StagePlan) -> dict[str, nn.Module]:
        return {"embed": Embed(model), "head": Head(model)}

    def new_task(self, plan: StagePlan, options: Any) -> ToyTask:
        return ToyTask(plan, options)


TOY = register_family(ToyFamily())

# --- through the shared layers --------------------------------------------------------------

N = ToyEncoder().num_tokens  # 16
BUCKETS = (4, 8)


@pytest.fixture(scope="module")
def model() -> ToyViT:
    torch.manual_seed(0)
    return ToyViT(get_config("toy-vit")).eval()


@pytest.fixture(scope="module")
def package(model, tmp_path_factory) -> Path:
    plan = StagePlan.create(model.cfg, BUCKETS, "per-block")
    out = tmp_path_factory.mktemp("toy") / "pkg"
    export_package(model, plan, out, progress=False, workers=1)
    return out


def frames(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(count)]


def test_the_family_is_found_by_name() -> None:
    assert family_named("toy") is TOY
    with pytest.raises(ValueError, match="already registered"):
        register_family(ToyFamily())


def test_its_package_checks_clean(package) -> None:
    report = check_package(package, progress=False)
    assert report.problems == []
    assert {g.name for g in report.graphs} >= {"embed", "head", "stage0_k4", "stage1_kK"}
    assert all(g.passed for g in report.graphs), report.graphs


def test_it_runs_pruned_on_onnx_runtime_as_on_pytorch(model, package) -> None:
    ort = Pipeline.load(package, "ort").new_stream(policy=FixedKeep(4), reset_every=3)
    ref = Pipeline.from_model(model, BUCKETS, "per-block").new_stream(
        policy=FixedKeep(4), reset_every=3
    )
    for i, frame in enumerate(frames(7)):
        a, b = ort.step(frame), ref.step(frame)
        assert isinstance(a, ToyResult)
        assert a.k == b.k == (N if i % 3 == 0 else 4)  # every third step resets
        assert torch.equal(a.keep, b.keep)
        torch.testing.assert_close(a.logits, b.logits, atol=1e-4, rtol=1e-4)


def test_keeping_all_tokens_is_the_dense_model(model, package) -> None:
    stream = Pipeline.load(package, "ort").new_stream(policy=FixedKeep(N))
    for frame in frames(3):
        result = stream.step(frame)
        with torch.no_grad():
            dense = model(torch.from_numpy(frame).permute(2, 0, 1)[None].float())
        assert result.k == N
        torch.testing.assert_close(result.logits, dense, atol=1e-4, rtol=1e-4)


def test_the_commands_say_what_a_family_without_tools_lacks() -> None:
    """This family runs packages and nothing more: the commands that would train, evaluate or
    feed it synthetic video say it has none, and the checkpoint namings offered stay those
    of the families that read them."""
    cfg = get_config("toy-vit")
    with pytest.raises(ValueError, match=r"toy-vit .* has no train_model"):
        tool(cfg, "train_model")
    with pytest.raises(ValueError, match="makes no synthetic video"):
        synthetic_frames(cfg, 2)
    assert {"auto", "rgtp", "timm", "detectron2"} <= set(weight_formats())
