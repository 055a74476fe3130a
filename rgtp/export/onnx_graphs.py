"""Tracing the stage modules into ONNX graphs with fixed or symbolic K."""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import re
import warnings

import onnx
import torch
from torch import nn

from rgtp._optional import require
from rgtp.package.plan import BATCH, GraphSpec, TensorSpec

DEFAULT_OPSET = 18
# torch's dynamo exporter has no operator implementations below 18: it exports at 18 and
# tries a version conversion that fails on our graphs, silently keeping 18
MIN_OPSET = 18
SYMBOLIC_K = "K"


class ExportError(ValueError):
    """An export was asked for something rgtp cannot produce or must not do."""


def check_opset(opset: int) -> int:
    """`opset` if the exporter can write it: MIN_OPSET up to what the installed onnx knows."""
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ExportError(
            f"opset {opset!r} cannot be exported: torch's exporter writes opsets "
            f"{MIN_OPSET}..{newest} (onnx {onnx.__version__})"
        )
    return opset


def graph_opset(model: onnx.ModelProto) -> int:
    """The default-domain (ai.onnx) opset a graph declares in its opset_import."""
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if len(versions) != 1:
        raise ExportError(f"{model.graph.name}: expected one ai.onnx opset, found {versions}")
    return versions[0]


def example_inputs(
    spec: GraphSpec, k: int, num_tokens: int, prefix: int = 0, batch: int = 1
) -> tuple[torch.Tensor, ...]:
    """Valid example inputs for tracing a stage graph (`plan.StagePlan.stage_spec`) of
    `batch` streams: random floats, each stream's `keep` the `prefix` rows and then k sorted
    distinct patch rows of its own."""
    g = torch.Generator().manual_seed(0)
    out = []
    for t in spec.inputs:
        shape = t.concrete({SYMBOLIC_K: k, BATCH: batch})
        if t.name == "keep":
            patches = [
                torch.randperm(num_tokens, generator=g)[:k].sort().values for _ in range(batch)
            ]
            out.append(
                torch.cat(
                    [torch.arange(prefix).expand(batch, -1), torch.stack(patches) + prefix], 1
                )
            )
        else:
            out.append(torch.randn(shape, generator=g))
    return tuple(out)


def _quietly():
    """The exporter narrates every step and warns about torchvision ops we never use."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    # the exporter's IR library warns of the empty shape constants its index_put lowering
    # writes (a 1-D index_copy), which it rightly types as ints
    for name in ("torch.onnx", "onnx_ir"):
        logger = logging.getLogger(name)
        stack.callback(logger.setLevel, logger.level)
        logger.setLevel(logging.ERROR)
    return stack


def export_graph(
    module: nn.Module,
    spec: GraphSpec,
    args: tuple[torch.Tensor, ...],
    symbolic_k: bool = False,
    opset: int = DEFAULT_OPSET,
) -> onnx.ModelProto:
    """Trace `module(*args)` to an ONNX model whose inputs/outputs carry `spec`'s names.

    The axes `spec` names symbolically stay symbolic in the graph, spelt as in `spec`: the
    batch axis "B" of a stage graph always; with `symbolic_k`, also "K" (or "K+E" for E
    prefix rows: those of `keep`, of `tokens` unless it holds all N tokens, and of every
    output that follows them). Every other shape is static. A symbolic axis must not be
    traced at size 1 (the tracer would specialise it).
    """
    module = module.eval()
    dynamic = None
    shapes = {t.name: a.shape for t, a in zip(spec.inputs, args, strict=True)}
    traced = spec.symbolic_dims(shapes)  # the sizes the args have, e.g. {"B": 2, "K": 77}
    symbols = [d for d in traced if symbolic_k or d != SYMBOLIC_K]
    if symbols:
        # K never exceeds the longest axis among the inputs (the caches' rows)
        longest = max(max(a.shape) for a in args)
        dims = {
            d: torch.export.Dim(d, min=1, max=longest if d == SYMBOLIC_K else None) for d in symbols
        }
        # TensorSpec.concrete over torch Dims: "K+1" becomes the derived Dim K + 1; a fixed K
        # is the traced size
        sizes = {**traced, **dims}
        axes = [
            {i: d for i, d in enumerate(t.concrete(sizes)) if not isinstance(d, int)} or None
            for t in spec.inputs
        ]
        # one entry per parameter of forward: a stage's caches come as *caches, one tuple
        params = inspect.signature(module.forward).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
            fixed = sum(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params)
            dynamic = (*axes[:fixed], tuple(axes[fixed:]))
        else:
            dynamic = tuple(axes)
    with _quietly(), torch.no_grad():
        program = torch.export.export(module, args, dynamic_shapes=dynamic)
        onnx_program = torch.onnx.export(
            program,
            input_names=spec.input_names,
            output_names=spec.output_names,
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
    model = onnx_program.model_proto
    if symbols:
        _rename_symbolic_dims(model, spec)
    _drop_trace_metadata(model)
    model.doc_string = f"rgtp graph {spec.name}"
    return model


def fix_k(model: onnx.ModelProto, spec: GraphSpec) -> onnx.ModelProto:
    """The graph of `spec` (a stage at one K) derived from the same stage's symbolic-K graph
    `model` (`export_graph` with `symbolic_k`): a new model whose "K" axes are `spec`'s sizes.

    Tracing is most of an export's time (seconds a graph); fixing the axes and letting the
    exporter's own optimiser (onnxscript's, as torch.onnx runs it: ONNX shape inference,
    then constant folding) fold what K decided (`Shape`, `Min(K, w²)`, the reshape sizes)
    takes a fraction of a second and gives the graph a direct trace at that K gives (equal
    outputs, as fast in ONNX Runtime and OpenVINO; measured in docs/architecture.md). The
    batch axis "B" stays symbolic."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    declared = {t.name: t.shape for t in (*spec.inputs, *spec.outputs)}
    for v in (*fixed.graph.input, *fixed.graph.output):
        dims = v.type.tensor_type.shape.dim
        shape = declared.get(v.name, ())  # the graph's other values keep their shapes
        if shape and len(dims) != len(shape):
            raise ExportError(f"{spec.name}: {v.name} has {len(dims)} axes, {spec} says {shape}")
        for d, axis in zip(dims, shape, strict=False):
            if isinstance(axis, int):
                d.Clear()
                d.dim_value = axis
    # the intermediate shapes name K ("K+1", "3*K"): inference writes them anew
    del fixed.graph.value_info[:]
    fixed = require("onnxscript.optimizer", "export").optimize(fixed)  # not in a lean install
    _drop_trace_metadata(fixed)  # the optimiser notes what each folded constant came from
    fixed.doc_string = f"rgtp graph {spec.name}"
    return fixed


def _drop_trace_metadata(model: onnx.ModelProto) -> None:
    """Remove the exporter's per-node metadata (stack traces, module scopes): it names files
    of the machine that exported, and a package must not (it travels to other machines and
    into Triton repositories); no runtime reads it."""
    for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        del value.metadata_props[:]
    nodes = [*model.graph.node, *(n for f in model.functions for n in f.node)]
    while nodes:
        node = nodes.pop()
        del node.metadata_props[:]
        for a in node.attribute:  # the bodies of If, Loop, Scan
            bodies = [a.g] if a.HasField("g") else list(a.graphs)
            nodes.extend(n for g in bodies for n in g.node)


_EXPORTER_SYMBOL = re.compile(r"\bs\d+\b")  # torch names a symbolic size "s18"


def _rename_symbolic_dims(model: onnx.ModelProto, spec: GraphSpec) -> None:
    """The exporter names symbolic axes like "s18" (derived ones "s18 + 1", "3*s18"): the
    inputs and outputs take `spec`'s spelling ("B", "K", "K+1"), intermediate values the
    names of the symbols they derive from, read off the inputs where an axis is one bare
    symbol."""
    graph = model.graph
    names: dict[str, str] = {}
    declared = {t.name: t.shape for t in spec.inputs}
    for v in graph.input:
        for d, axis in zip(v.type.tensor_type.shape.dim, declared.get(v.name, ()), strict=False):
            if d.HasField("dim_param") and isinstance(axis, str) and "+" not in axis:
                names.setdefault(d.dim_param.strip(), axis)
    for values, specs in ((graph.input, spec.inputs), (graph.output, spec.outputs)):
        declared = {t.name: t.shape for t in specs}
        for v in values:
            dims = v.type.tensor_type.shape.dim
            for d, axis in zip(dims, declared.get(v.name, ()), strict=False):
                if d.HasField("dim_param") and isinstance(axis, str):
                    d.dim_param = axis
    for v in graph.value_info:
        for d in v.type.tensor_type.shape.dim:
            if d.HasField("dim_param"):
                renamed = _EXPORTER_SYMBOL.sub(lambda m: names.get(m[0], m[0]), d.dim_param)
                d.dim_param = renamed.replace(" ", "")


def graph_interface(model: onnx.ModelProto, name: str) -> GraphSpec:
    """The inputs and outputs an ONNX graph declares (initializers are not inputs), with
    symbolic axes as their names and numpy dtype names ("float32")."""
    initialized = {i.name for i in model.graph.initializer}

    def spec(v: onnx.ValueInfoProto) -> TensorSpec:
        tt = v.type.tensor_type
        shape = tuple(d.dim_param if d.HasField("dim_param") else d.dim_value for d in tt.shape.dim)
        try:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name
        except KeyError:
            dtype = f"onnx-type-{tt.elem_type}"
        return TensorSpec(v.name, shape, dtype)

    return GraphSpec(
        name,
        tuple(spec(v) for v in model.graph.input if v.name not in initialized),
        tuple(spec(v) for v in model.graph.output),
    )
