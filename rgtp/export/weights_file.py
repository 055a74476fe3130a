"""One external-data file shared by several ONNX graphs.

Every K variant of a stage holds the same parameters; writing them through one
`SharedWeights` file stores each distinct tensor once, and every graph's initializers point
into it (ONNX external data: location, offset, length).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
from onnx import numpy_helper

ALIGN = 64  # bytes; lets runtimes map tensors without realignment copies


class SharedWeights:
    def __init__(self, path: Path, min_bytes: int = 1024) -> None:
        self.path = path
        self.min_bytes = min_bytes
        self._index: dict[str, tuple[int, int]] = {}
        self._file = path.open("wb")

    def externalize(self, model: onnx.ModelProto) -> None:
        """Move the model's large initializers into the shared file (in place)."""
        for init in model.graph.initializer:
            if not init.raw_data:
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init), init.name))
            raw = init.raw_data
            if len(raw) < self.min_bytes:
                continue
            key = hashlib.sha256(raw).hexdigest()
            if key not in self._index:
                pad = (-self._file.tell()) % ALIGN
                self._file.write(b"\0" * pad)
                self._index[key] = (self._file.tell(), len(raw))
                self._file.write(raw)
            offset, length = self._index[key]
            init.ClearField("raw_data")
            del init.external_data[:]
            for k, v in (("location", self.path.name), ("offset", offset), ("length", length)):
                entry = init.external_data.add()
                entry.key, entry.value = k, str(v)
            init.data_location = onnx.TensorProto.EXTERNAL

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SharedWeights:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
