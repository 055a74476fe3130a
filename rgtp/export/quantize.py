"""int8 graphs: the exporter's float32 graphs lowered by ONNX Runtime's quantization tool.

Quantized: every `MatMul` with a constant weight (the transformer's weight matmuls, nearly
all of a stage's multiply-adds), and with static scales every `Conv` with one too (the embed
graph's patch embedding, the detection head's neck and conv towers: 122 GMACs a frame at
vitdet-b @ 672, more than a pruned backbone). The int8 kernels (AVX-512 VNNI on this
project's CPUs) run them faster than float32, except ONNX Runtime's `ConvInteger`, the
dynamic form of a convolution, which is slower than its float32 `Conv` (docs/precision.md):
dynamic int8 leaves convolutions float32. Everything else stays float32:

- the graphs' inputs and outputs, so the runtime's arithmetic between engine calls —
  tracking, top-K, rollout, gathers and scatters — is the float32 method whatever the
  package's precision (`rgtp.core` is written once), and a head's boxes and scores are
  float32 (static int8 packages then hold the stage graphs' key/value caches in int8,
  values the runtime only stores: `export.int8_caches`);
- with dynamic int8, attention's activation-by-activation matmuls (QKᵀ, AV); static Q/DQ
  lowers them too (ONNX Runtime's Q/DQ quantizer does not take `MatMulConstBOnly`), and
  OpenVINO runs them on int8: measured faster than leaving them float32 (docs/precision.md);
- softmax, the normalisations and the neck's transposed convolutions (`ConvTranspose`,
  which dynamic quantization has no integer operator for);
- a user's own head graph (`--head onnx`), which rgtp did not write.

Two methods:
- "dynamic" measures each activation's range per call (`DynamicQuantizeLinear`), so it needs
  no calibration data and cannot be miscalibrated by frames unlike the user's;
- "static" fixes every activation's scale ahead of time from the feeds the graphs were
  called with on calibration video (`runtime.calibration`), as Q/DQ pairs (symmetric int8,
  per-channel weights): the form OpenVINO and TensorRT run on int8 kernels. The keys'
  transposes ahead of attention are then split so that OpenVINO folds the matrix swap into
  its matmul (`qdq_layout`; exact).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from rgtp._optional import require
from rgtp.export.qdq_layout import split_key_transposes

PRECISIONS = ("fp32", "int8")  # what an exported package's graphs compute in
METHODS = ("dynamic", "static")
# what each method quantizes unless told: ONNX Runtime's ConvInteger (dynamic) runs the
# vitdet-b head slower than its float32 Conv, Q/DQ convolutions run it faster on ONNX Runtime
# and OpenVINO (benchmarks/head_profile.py; figures in docs/precision.md)
DEFAULT_OP_TYPES = {"dynamic": ("MatMul",), "static": ("MatMul", "Conv")}

# per graph name: the feeds of its calls on calibration video, each {input name: array}
Feeds = Mapping[str, Sequence[Mapping[str, np.ndarray]]]


class QuantizeError(ValueError):
    """A precision or quantization setting rgtp cannot produce."""


@dataclass(frozen=True)
class Int8Settings:
    """How the graphs are quantized. `per_channel`: one weight scale per output channel
    instead of one per matrix (finer, a little slower); `op_types`: the operators
    quantized where one input is a constant weight, in every graph that has them (stage
    graphs have no `Conv`: it is the embed and head graphs'); None: the method's
    `DEFAULT_OP_TYPES`."""

    method: str = "dynamic"
    per_channel: bool = False
    op_types: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise QuantizeError(f"int8 method {self.method!r}: choose from {METHODS}")
        if self.op_types is None:  # frozen: set once, here
            object.__setattr__(self, "op_types", DEFAULT_OP_TYPES[self.method])
        if not self.op_types:
            raise QuantizeError("int8 quantization needs at least one operator type")

    def record(
        self,
        graphs: list[str],
        calibration: dict | None = None,
        cache_scales: dict[str, float] | None = None,
    ) -> dict[str, Any]:
        """The manifest's `quantization` entry for `graphs` quantized with these settings
        (`calibration`: what static scales were measured on; `cache_scales`: the caches the
        stage graphs take in int8, each with its scale, `export.int8_caches`)."""
        onnxruntime = require("onnxruntime", "ort", "int8 quantization")

        return {
            "precision": "int8",
            "method": self.method,
            "tool": f"onnxruntime.quantization {onnxruntime.__version__}",
            "weight_type": "int8",
            # DynamicQuantizeLinear quantizes activations to uint8 (asymmetric); static
            # scales are symmetric int8, as TensorRT requires
            "activation_type": "int8" if self.method == "static" else "uint8",
            "per_channel": self.per_channel,
            "op_types": list(self.op_types),
            "graphs": graphs,
            **({"calibration": calibration} if calibration else {}),
            **({"int8_caches": cache_scales} if cache_scales else {}),
        }


def int8_settings(
    precision: str, per_channel: bool = False, method: str = "dynamic"
) -> Int8Settings | None:
    """The quantization a `--precision` asks for: None for float32 graphs."""
    if precision not in PRECISIONS:
        raise QuantizeError(f"precision {precision!r}: a package's graphs are one of {PRECISIONS}")
    return Int8Settings(method, per_channel) if precision == "int8" else None


def quantize_graph(
    model: onnx.ModelProto,
    settings: Int8Settings,
    calibration: Sequence[Mapping[str, np.ndarray]] | None = None,
) -> onnx.ModelProto:
    """`model` (initializers inline, as the exporter returns it) with its weight matmuls
    and convolutions (`settings.op_types`) in int8; static quantization measures activation
    ranges on `calibration` (the graph's feeds). The graph's interface (input and output
    names, shapes, dtypes) is unchanged."""
    require("onnxruntime", "ort", "int8 quantization")  # before its submodule: names the extra
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    # activations times activations (attention's QK^T and AV) stay float32 with dynamic int8
    # (the Q/DQ quantizer ignores this option and lowers them: see the module's docstring)
    options: dict[str, Any] = {"MatMulConstBOnly": True}
    with tempfile.TemporaryDirectory(prefix="rgtp-int8-") as tmp, _quiet_advice():
        # by path: given a ModelProto, the tool writes temporary weight files of its own (in
        # the working directory) that its result may still point to. Saved whole (graphs
        # are far below protobuf's 2 GB) so that `model` itself is left as it is.
        source, out = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(source))
        if settings.method == "dynamic":
            quantize_dynamic(
                source,
                out,
                op_types_to_quantize=list(settings.op_types),
                per_channel=settings.per_channel,
                weight_type=QuantType.QInt8,
                extra_options=options,
            )
        else:
            if not calibration:
                raise QuantizeError(
                    f"static int8 needs calibration feeds for graph {model.graph.name!r}"
                )
            quantize_static(
                source,
                out,
                _Reader(calibration),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(settings.op_types),
                per_channel=settings.per_channel,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                # symmetric scales (zero point 0): what TensorRT's int8 kernels take; conv
                # biases stay float32 (TensorRT parses no int32 DequantizeLinear)
                extra_options={
                    **options,
                    "ActivationSymmetric": True,
                    "WeightSymmetric": True,
                    "QuantizeBias": False,
                },
            )
        quantized = onnx.load(str(out))  # external data, if any, read in while it exists
    if settings.method == "static":
        split_key_transposes(quantized)  # exact; OpenVINO's int8 transposes (qdq_layout)
    _same_interface(model, quantized)
    return quantized


class _Reader:
    """ONNX Runtime's calibration reader over recorded feeds: its `CalibrationDataReader`
    is an ABC that takes any class with `get_next` as a subclass, so this one need not
    import ONNX Runtime to be defined (the exporter imports this module)."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        feed = next(self._feeds, None)
        return None if feed is None else dict(feed)


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
