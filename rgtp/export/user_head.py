"""A user's ONNX detection head (`rgtp export --head-onnx`): read, checked against the
contract the runtime feeds it by, and carried into the package like rgtp's own head.

The contract (`rgtp.families.detection.head_io.check_user_head`): one float32 input, the
backbone map as (N, C) or (1, C, H, W); the first two outputs boxes (M, 4) in model-input
pixels and scores (M, classes), optionally with a leading batch of 1, static shapes (a fixed
M, e.g. the top-M candidates). rgtp applies the score threshold and NMS to them, as to its
own head.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from rgtp.export.onnx_graphs import graph_interface
from rgtp.package.plan import GraphSpec


class UserHeadError(ValueError):
    """A user's head graph cannot be read or does not follow the head contract."""


def read_user_head(path: str | Path) -> tuple[onnx.ModelProto, GraphSpec]:
    """The head graph (external data loaded) and the interface it declares."""
    path = Path(path)
    if not path.is_file():
        raise UserHeadError(f"head graph not found: {path}")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as e:  # protobuf and checker errors: not a usable ONNX graph
        raise UserHeadError(f"{path}: not a valid ONNX graph ({type(e).__name__}: {e})") from e
    spec = graph_interface(model, "head")
    symbolic = [t.name for t in (*spec.inputs, *spec.outputs[:2]) if not _static(t.shape)]
    if symbolic:
        raise UserHeadError(
            f"{path}: {', '.join(symbolic)} have symbolic axes; export your head with static "
            "shapes (a batch of 1 and a fixed number of candidate boxes)"
        )
    problems = run_problems(model, spec)
    if problems:
        raise UserHeadError(f"{path}: " + "; ".join(problems))
    return model, spec


def head_file_problems(path: Path, spec: GraphSpec) -> list[str]:
    """`run_problems` of a package's head graph file, each naming the file (`rgtp check`)."""
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf errors: the interface check reports the file first
        return [f"{path.name}: not a readable ONNX graph ({type(e).__name__}: {e})"]
    return [f"{path.name}: your head graph: {p}" for p in run_problems(model, spec)]


def run_problems(model: onnx.ModelProto, spec: GraphSpec) -> list[str]:
    """Run the head once on ONNX Runtime (CPU) at its declared input shape, the backbone map
    (N, C) or (1, C, H, W) of the package, and list how what it computes differs from what
    it declares: output count, shape (e.g. boxes declared (256, 4), computed (100, 4)) or
    dtype, or the error that running it raised. Empty when it keeps its word.

    A declared interface is only a promise: ONNX does not check it against the graph's
    operators, and the runtime sizes its buffers and reads boxes by it, so a head that
    breaks it would pass export and then fail on every frame."""
    import onnxruntime as ort

    if len(spec.inputs) != 1 or spec.inputs[0].dtype != "float32":
        return []  # not a map input: the head contract's check says so (check_user_head)
    (inp,) = spec.inputs
    # Random normal values: a backbone map's scale; a head that fails on them fails on maps.
    feed = np.random.default_rng(0).standard_normal(inp.shape, dtype=np.float32)
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3  # its verdict is ours to word: no shape warnings
        session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        outputs = session.run(None, {inp.name: feed})
    except Exception as e:  # ORT's Fail / InvalidArgument / RuntimeException, all one story
        return [
            f"running it once on a map of shape {tuple(inp.shape)} failed on ONNX Runtime "
            f"({type(e).__name__}: {str(e).strip()})"
        ]
    if len(outputs) != len(spec.outputs):
        return [f"it declares {len(spec.outputs)} outputs and computes {len(outputs)}"]
    problems = []
    for t, value in zip(spec.outputs, outputs, strict=True):
        value = np.asarray(value)
        if not _fits(value.shape, tuple(t.shape)):
            problems.append(
                f"output {t.name} is declared {tuple(t.shape)} but computes {value.shape} on "
                f"a map of shape {tuple(inp.shape)}"
            )
        elif value.dtype.name != t.dtype:
            problems.append(f"output {t.name} is declared {t.dtype} but computes {value.dtype}")
    return problems


def _static(shape: tuple[int | str, ...]) -> bool:
    return all(isinstance(d, int) and d > 0 for d in shape)


def _fits(shape: tuple[int, ...], declared: tuple[int | str, ...]) -> bool:
    """A computed shape against a declared one, whose symbolic axes (names) take any size."""
    return len(shape) == len(declared) and all(
        isinstance(d, str) or d == n for n, d in zip(shape, declared, strict=True)
    )
