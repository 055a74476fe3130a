"""int8 graphs: the exporter's float32 graphs lowered by ONNX Runtime's quantization tool.

Only the transformer's weight matmuls are quantized (`MatMul` with a constant weight): they
hold nearly all of a stage's multiply-adds, and the int8 kernels (AVX-512 VNNI on this
project's CPUs) run them about twice as fast. Everything else stays float32:

- the graphs' inputs and outputs, so the runtime's arithmetic between engine calls —
  tracking, top-K, rollout, caches, gathers and scatters — is the float32 method whatever
  the package's precision (`rgtp.core` is written once);
- attention's activation-by-activation matmuls, softmax and the normalisations, where int8
  would cost accuracy for little time;
- a user's own head graph (`--head onnx`), which rgtp did not write.

"dynamic" quantization measures each activation's range per call (`DynamicQuantizeLinear`),
so it needs no calibration data and cannot be miscalibrated by frames unlike the user's.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

PRECISIONS = ("fp32", "int8")  # what an exported package's graphs compute in
METHODS = ("dynamic",)


class QuantizeError(ValueError):
    """A precision or quantization setting rgtp cannot produce."""


@dataclass(frozen=True)
class Int8Settings:
    """How the graphs are quantized. `per_channel`: one weight scale per output channel
    instead of one per matrix (finer, a little slower); `op_types`: the operators
    quantized where one input is a constant weight."""

    method: str = "dynamic"
    per_channel: bool = False
    op_types: tuple[str, ...] = ("MatMul",)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise QuantizeError(f"int8 method {self.method!r}: choose from {METHODS}")
        if not self.op_types:
            raise QuantizeError("int8 quantization needs at least one operator type")

    def record(self, graphs: list[str]) -> dict[str, Any]:
        """The manifest's `quantization` entry for `graphs` quantized with these settings."""
        import onnxruntime

        return {
            "precision": "int8",
            "method": self.method,
            "tool": f"onnxruntime.quantization {onnxruntime.__version__}",
            "weight_type": "int8",
            # DynamicQuantizeLinear quantizes activations to uint8 (asymmetric)
            "activation_type": "uint8",
            "per_channel": self.per_channel,
            "op_types": list(self.op_types),
            "graphs": graphs,
        }


def int8_settings(precision: str, per_channel: bool = False) -> Int8Settings | None:
    """The quantization a `--precision` asks for: None for float32 graphs."""
    if precision not in PRECISIONS:
        raise QuantizeError(f"precision {precision!r}: a package's graphs are one of {PRECISIONS}")
    return Int8Settings(per_channel=per_channel) if precision == "int8" else None


def quantize_graph(model: onnx.ModelProto, settings: Int8Settings) -> onnx.ModelProto:
    """`model` (initializers inline, as the exporter returns it) with its weight matmuls
    in int8. The graph's interface (input and output names, shapes, dtypes) is unchanged."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="rgtp-int8-") as tmp, _quiet_advice():
        out = Path(tmp) / "int8.onnx"
        quantize_dynamic(
            model,
            out,
            op_types_to_quantize=list(settings.op_types),
            per_channel=settings.per_channel,
            weight_type=QuantType.QInt8,
            # activations times activations (attention's QK^T and AV) stay float32
            extra_options={"MatMulConstBOnly": True},
        )
        quantized = onnx.load(str(out))
    _same_interface(model, quantized)
    return quantized


@contextlib.contextmanager
def _quiet_advice() -> Iterator[None]:
    """Drop the tool's "consider pre-processing" warning, logged to the root logger on every
    call: shape inference is what it advises, and the exporter's graphs carry their shapes."""

    def drop(record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _same_interface(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    def interface(m: onnx.ModelProto) -> list[str]:
        return [str(v) for v in (*m.graph.input, *m.graph.output)]

    if interface(before) != interface(after):
        raise QuantizeError(f"quantizing {before.graph.name!r} changed its inputs or outputs")
