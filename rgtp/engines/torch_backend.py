"""The PyTorch reference backend: the stage modules themselves, run eagerly."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from rgtp.engines.base import Engine, EngineError, EngineSet, check_feeds
from rgtp.models.manifest import Manifest, package_file
from rgtp.models.plan import GraphSpec, StagePlan
from rgtp.models.stages import stage_modules


class TorchEngine:
    """An nn.Module behind the engine protocol."""

    def __init__(self, spec: GraphSpec, module: nn.Module) -> None:
        self.spec = spec
        self.module = module.eval()

    @torch.inference_mode()
    def run(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        check_feeds(self.spec, feeds)
        out = self.module(*(feeds[n] for n in self.spec.input_names))
        if isinstance(out, torch.Tensor):  # a one-output graph
            out = (out,)
        return dict(zip(self.spec.output_names, out, strict=True))


def torch_engines(
    model: nn.Module,
    plan: StagePlan,
    device: torch.device | str = "cpu",
    user_head: Engine | None = None,
) -> EngineSet:
    """Engines for every graph of `plan`, sharing the parameters of `model` (of the plan's
    family: a `Detector`, a `ViViT`).

    One module per stage serves every K: the torch graph is shape-polymorphic, so the
    weights exist once whatever the number of buckets. A plan with a user's ONNX head needs
    that head's engine as `user_head` (there is no PyTorch module for it).
    """
    device = torch.device(device)
    model = model.to(device).eval()
    family = plan.family
    stages = []
    for i, module in enumerate(stage_modules(family.encoder(model), plan)):
        module = module.to(device)
        stages.append({k: TorchEngine(plan.stage_spec(i, k), module) for k in plan.buckets})
    if plan.head == "onnx" and user_head is None:
        raise EngineError("this plan's head is a user's ONNX graph: pass its engine as user_head")
    modules = {name: m.to(device) for name, m in family.modules(model, plan).items()}
    head = TorchEngine(plan.head_spec(), modules["head"]) if "head" in modules else user_head
    return EngineSet(
        plan=plan,
        backend="torch",
        device=device,
        embed=TorchEngine(plan.embed_spec(), modules["embed"]),
        head=head,
        stages=stages,
        info={"torch": torch.__version__, "device": str(device)},
        extra={name: TorchEngine(spec, modules[name]) for name, spec in plan.extra_specs().items()},
    )


def load_torch_engines(
    package: Path, device: torch.device | str = "cpu", verify: bool = True
) -> EngineSet:
    """The reference engines of an exported package, rebuilt from its saved weights once
    every file of the package is verified (`verify=False`: sizes only, with a warning)."""
    from rgtp.models.package_verify import load_verified

    return package_torch_engines(package, load_verified(Path(package), verify), device)


def package_torch_engines(
    package: Path, manifest: Manifest, device: torch.device | str = "cpu"
) -> EngineSet:
    """Reference engines from a package whose files the caller has verified."""
    family = manifest.plan.family
    model = family.build(manifest.plan.config)
    family.load_weights(model, package_file(package, manifest.model_weights))
    user_head = None
    if manifest.plan.head == "onnx":
        # no PyTorch module exists for a user's graph: ONNX Runtime on the CPU runs it
        from rgtp.engines.ort_backend import open_session

        cpu = open_session(package, manifest.graph("head"), torch.device("cpu"))
        user_head = _OnDevice(cpu, torch.device(device))
    return torch_engines(model, manifest.plan, device, user_head)


class _OnDevice:
    """An engine that runs elsewhere, seen from `device`: inputs go to it, outputs back."""

    def __init__(self, engine: Engine, device: torch.device) -> None:
        self.engine, self.spec, self.device = engine, engine.spec, device

    def run(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.engine.run({n: t.cpu() for n, t in feeds.items()})
        return {n: t.to(self.device) for n, t in out.items()}
