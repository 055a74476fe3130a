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
    return model, spec


def _static(shape: tuple[int | str, ...]) -> bool:
    return all(isinstance(d, int) and d > 0 for d in shape)
