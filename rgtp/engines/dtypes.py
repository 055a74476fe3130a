"""The element types a graph interface declares, and what each backend binds them as.

A manifest names a dtype as numpy does ("float32"); torch allocates and converts the
tensors every backend reads and writes, and ONNX Runtime's `IOBinding` and Polygraphy take
numpy dtypes. This table is the only place the names meet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rgtp.engines.base import EngineError


@dataclass(frozen=True)
class DType:
    name: str  # as the manifest and numpy name it
    torch: torch.dtype
    numpy: np.dtype


DTYPES = {
    d.name: d
    for d in (
        DType("float32", torch.float32, np.dtype(np.float32)),
        DType("int64", torch.int64, np.dtype(np.int64)),
        # a static int8 package's key/value caches (`export.int8_caches`)
        DType("int8", torch.int8, np.dtype(np.int8)),
    )
}


def dtype(name: str) -> DType:
    """The dtype a manifest calls `name`; EngineError for one rgtp does not bind."""
    try:
        return DTYPES[name]
    except KeyError:
        raise EngineError(
            f"tensors of dtype {name!r} cannot be bound; graph interfaces use {list(DTYPES)}"
        ) from None
