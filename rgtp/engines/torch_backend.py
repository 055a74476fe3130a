"""The PyTorch reference backend: the stage modules themselves, run eagerly, or on CUDA
replayed as CUDA graphs (one per stage, K bucket and stream buffers, `engines.cuda_graphs`),
in float32 or in reduced precision (float16, bfloat16)."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from rgtp.engines.base import Engine, EngineError, EngineSet, check_feeds
from rgtp.engines.cuda_graphs import GraphCache
from rgtp.models.stages import stage_modules
from rgtp.package.manifest import Manifest, package_file
from rgtp.package.plan import GraphSpec, StagePlan
from rgtp.package.verify import load_verified

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# Outputs a stream keeps in the engines' own dtype (its caches and maintained output are of
# that dtype, so they are written without a cast; tracking compares patches in it, its
# matrix products on tensor cores); every other output comes back as float32 (attention rows
# for rollout, predictions).
_STREAM_DTYPE_OUTPUTS = re.compile(r"patches|tokens|tokens_out|[kv]_new_\d+")


class TorchEngine:
    """An nn.Module behind the engine protocol.

    dtype: what the module computes in (its parameters' dtype); floating inputs are cast to
    it (a no-op for buffers a stream already keeps in it), outputs as `_STREAM_DTYPE_OUTPUTS`.
    graphs: replay CUDA graphs per set of input buffers (`GraphCache`); outputs then belong
    to the graph and stay valid until this engine runs again on the same inputs.
    """

    def __init__(
        self,
        spec: GraphSpec,
        module: nn.Module,
        dtype: torch.dtype = torch.float32,
        graphs: GraphCache | None = None,
    ) -> None:
        self.spec = spec
        self.module = module.eval()
        self.dtype = dtype
        self.graphs = graphs

    @torch.inference_mode()
    def run(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        check_feeds(self.spec, feeds)
        inputs = {n: feeds[n] for n in self.spec.input_names}
        if self.graphs is None:
            return self._forward(inputs)
        return self.graphs.run(inputs, self._forward)

    def _forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        args = (x.to(self.dtype) if x.is_floating_point() else x for x in inputs.values())
        out = self.module(*args)
        if isinstance(out, torch.Tensor):  # a one-output graph
            out = (out,)
        return {
            n: y if not y.is_floating_point() or _STREAM_DTYPE_OUTPUTS.fullmatch(n) else y.float()
            for n, y in zip(self.spec.output_names, out, strict=True)
        }


def torch_engines(
    model: nn.Module,
    plan: StagePlan,
    device: torch.device | str = "cpu",
    user_head: Engine | None = None,
    precision: str = "fp32",
    cuda_graphs: bool = False,
) -> EngineSet:
    """Engines for every graph of `plan`, sharing the parameters of `model` (of the plan's
    family: a `Detector`, a `ViViT`).

    One module per stage serves every K: the torch graph is shape-polymorphic, so the
    weights exist once whatever the number of buckets. A plan with a user's ONNX head needs
    that head's engine as `user_head` (there is no PyTorch module for it).

    precision: "fp32", or "fp16" / "bf16": every graph computes in that dtype (on a copy of
        `model`) and streams keep their caches in it.
    cuda_graphs: on CUDA, the engines replay one CUDA graph per set of stream buffers (for a
        stage, per K too).
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise EngineError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if cuda_graphs and device.type != "cuda":
        raise EngineError(f"CUDA graphs need a CUDA device; the engines are on {device}")
    dtype = PRECISIONS[precision]
    if dtype != torch.float32:
        model = copy.deepcopy(model)  # the caller's model stays as it was
    model = model.to(device=device, dtype=dtype).eval()
    family = plan.family
    stages = []
    for i, module in enumerate(stage_modules(family.encoder(model), plan)):
        module = module.to(device)
        graphs = GraphCache(device) if cuda_graphs else None
        stages.append(
            {
                k: TorchEngine(plan.stage_spec(i, k), module, dtype, graphs)
                for k in plan.buckets_of(i)
            }
        )
    if plan.head == "onnx" and user_head is None:
        raise EngineError("this plan's head is a user's ONNX graph: pass its engine as user_head")
    modules = {name: m.to(device) for name, m in family.modules(model, plan).items()}

    def engine(spec: GraphSpec, name: str) -> TorchEngine:
        # streams feed these from buffers of their own (`Stream`), so graphs replay too
        return TorchEngine(spec, modules[name], dtype, GraphCache(device) if cuda_graphs else None)

    return EngineSet(
        plan=plan,
        backend="torch",
        device=device,
        embed=engine(plan.embed_spec(), "embed"),
        head=engine(plan.head_spec(), "head") if "head" in modules else user_head,
        stages=stages,
        info={"torch": torch.__version__, "device": str(device), "precision": precision},
        extra={name: engine(spec, name) for name, spec in plan.extra_specs().items()},
        dtype=dtype,
        static_inputs=cuda_graphs,
    )


def load_torch_engines(
    package: Path,
    device: torch.device | str = "cpu",
    verify: bool = True,
    precision: str = "fp32",
    cuda_graphs: bool = False,
    digest: str | None = None,
) -> EngineSet:
    """The reference engines of an exported package, rebuilt from its saved weights once
    every file of the package is verified (`verify=False`: sizes only, with a warning);
    `precision` and `cuda_graphs` as `torch_engines`; `digest` as `load_verified`."""
    manifest = load_verified(Path(package), verify, digest)
    return package_torch_engines(package, manifest, device, precision, cuda_graphs)


def package_torch_engines(
    package: Path,
    manifest: Manifest,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    cuda_graphs: bool = False,
) -> EngineSet:
    """Reference engines from a package whose files the caller has verified; EngineError for
    a package exported without its model's weights (`rgtp export --no-reference`)."""
    if manifest.model_weights is None:
        raise EngineError(
            f"{package} holds no reference weights (exported with --no-reference): the torch "
            "backend runs the model's own weights; export it again with --reference, or run "
            "its graphs on another backend (ort, openvino, trt)"
        )
    family = manifest.plan.family
    model = family.build(manifest.plan.config)
    family.load_weights(model, package_file(package, manifest.model_weights))
    user_head = None
    if manifest.plan.head == "onnx":
        # no PyTorch module exists for a user's graph: ONNX Runtime on the CPU runs it
        from rgtp.engines.ort_backend import open_session

        cpu = open_session(package, manifest.graph("head"), torch.device("cpu"))
        user_head = _OnDevice(cpu, torch.device(device))
    return torch_engines(model, manifest.plan, device, user_head, precision, cuda_graphs)


class _OnDevice:
    """An engine that runs elsewhere, seen from `device`: inputs go to it, outputs back."""

    def __init__(self, engine: Engine, device: torch.device) -> None:
        self.engine, self.spec, self.device = engine, engine.spec, device

    def run(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.engine.run({n: t.cpu() for n, t in feeds.items()})
        return {n: t.to(self.device) for n, t in out.items()}
