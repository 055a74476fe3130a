"""Key/value caches held in int8 between the calls of static int8 stage graphs.

A stage graph reads each cached block's keys and values for all N rows on every call, as
float32 inputs, and static Q/DQ quantizes them (with the kept rows' fresh ones written in)
before attention's matmuls anyway. Held in int8 on that same scale, the caches carry exactly
the values those matmuls read, at a quarter of the bytes a call moves, and the runtime's
commit copies a quarter of the bytes too (docs/precision.md measures both).

The rewrite, per cache input X with its fresh-rows output Y (`k_cache_b` and `k_new_b`):
X becomes int8 with a `DequantizeLinear` in front of its readers; the Q/DQ pairs the
quantizer put where X's rows reach attention (through layout operators: gathers, reshapes,
transposes, the scatter of the fresh rows; and scalings by positive constants, with which
the pair's scale is scaled alike) take X's scale s; Y gets a `QuantizeLinear` on s and
becomes int8, so the runtime writes back the very values the matmul read. s is one per
cache for every graph of the stage (every K bucket reads and writes the same cache): the
largest of the scales the quantizer calibrated for those pairs in the stage's graphs (what
flowed into them, fresh rows included) and of the largest magnitude the calibration feeds
held in X, / 127, so that neither the stored values nor the fresh ones clip more than
before. A stage's caches are int8 all together or not at all (the runtime holds a stage's
caches in one tensor).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# operators a cache's rows pass through on their way to attention's Q/DQ pair, and the
# input of each that carries them (the scatter of the fresh rows writes into its input 0)
LAYOUT_OPS = {
    "Gather": 0,
    "Reshape": 0,
    "ScatterND": 0,
    "Transpose": 0,
    "Squeeze": 0,
    "Unsqueeze": 0,
    "Flatten": 0,
    "Identity": 0,
}


def cache_scales(
    feeds: Iterable[Mapping[str, np.ndarray]], caches: Sequence[str]
) -> dict[str, float]:
    """Per cache input, the symmetric int8 scale covering every value `feeds` (a stage's
    calibration calls, all its graphs) held in it; caches that held nothing but zeros are
    left out (no scale to speak of: they stay float32)."""
    peak = dict.fromkeys(caches, 0.0)
    for feed in feeds:
        for name in caches:
            if name in feed:
                peak[name] = max(peak[name], float(np.abs(feed[name]).max()))
    return {name: m / 127.0 for name, m in peak.items() if m > 0}


def attention_qdq(model: onnx.ModelProto, cache: str) -> list[tuple[onnx.NodeProto, float]] | None:
    """The per-tensor Q/DQ pairs where input `cache`'s rows reach attention through layout
    operators and multiplications by positive scalar constants only (the exported fused
    attention scales its keys), each node (Q, DQ, Q, DQ, ...) with the factor its input is
    the cache's values times; None where any path from the cache does otherwise (then its
    values are not simply requantized, and the cache stays float32)."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    constants = {init.name: init for init in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    found: list[tuple[onnx.NodeProto, float]] = []
    frontier = [(cache, 1.0)]
    while frontier:
        tensor, factor = frontier.pop()
        if tensor in outputs or not readers.get(tensor):
            return None
        for node in readers[tensor]:
            at = list(node.input).index(tensor)
            if node.op_type == "Shape":  # the dequantized input has the same shape
                continue
            if node.op_type == "QuantizeLinear":
                pair = readers.get(node.output[0], [])
                if (
                    len(pair) != 1
                    or pair[0].op_type != "DequantizeLinear"
                    or _scalar(node.input[1], constants) is None
                    or _scalar(pair[0].input[1], constants) is None
                ):
                    return None
                found += [(node, factor), (pair[0], factor)]
            elif LAYOUT_OPS.get(node.op_type) == at:
                frontier.append((node.output[0], factor))
            elif node.op_type == "Mul" or (node.op_type == "Div" and at == 0):
                c = _scalar(node.input[1 - at], constants)
                if c is None or not c > 0:
                    return None
                frontier.append(
                    (node.output[0], factor / c if node.op_type == "Div" else factor * c)
                )
            else:
                return None
    return found


def calibrated_scale(model: onnx.ModelProto, cache: str) -> float:
    """The largest scale, in the cache's own units (each pair's scale over its factor),
    that the quantizer calibrated for the Q/DQ pairs `cache`'s rows reach in `model`: what
    flowed into them on calibration video, the fresh rows of each call included. 0 where
    it reaches none."""
    pairs = attention_qdq(model, cache) or []
    constants = {init.name: init for init in model.graph.initializer}
    values = [(_scalar(node.input[1], constants) or 0.0) / f for node, f in pairs]
    return max(values, default=0.0)


def int8_cache_io(
    model: onnx.ModelProto, scales: Mapping[str, float], fresh: Mapping[str, str]
) -> None:
    """Rewrite `model` in place: each cache input in `scales` int8 on its scale, its
    attention Q/DQ pairs on the same scale (times the factor their input is the cache's
    values times), and its fresh-rows output (`fresh`: cache input -> output name)
    quantized on it. Callers check `attention_qdq` first (ValueError here where a cache has
    no such pairs)."""
    graph = model.graph
    inputs = {v.name: v for v in graph.input}
    outputs = {v.name: v for v in graph.output}
    for cache, scale in scales.items():
        pairs = attention_qdq(model, cache)
        if pairs is None:
            raise ValueError(f"{graph.name}: {cache} does not reach attention by layout only")
        s, zero = f"{cache}_int8_scale", f"{cache}_int8_zero_point"
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.array(scale, np.float32), s),
                numpy_helper.from_array(np.array(0, np.int8), zero),
            ]
        )
        scaled: dict[float, str] = {1.0: s}
        for node, factor in pairs:
            if factor not in scaled:
                scaled[factor] = f"{s}_{len(scaled)}"
                value = np.array(np.float32(scale) * np.float32(factor), np.float32)
                graph.initializer.append(numpy_helper.from_array(value, scaled[factor]))
            node.input[1] = scaled[factor]
            if len(node.input) > 2:
                node.input[2] = zero
        # the input: int8, dequantized in front of its readers
        values = f"{cache}_dequantized"
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name == cache:
                    node.input[i] = values
        graph.node.insert(0, helper.make_node("DequantizeLinear", [cache, s, zero], [values]))
        inputs[cache].type.tensor_type.elem_type = TensorProto.INT8
        # the fresh rows: quantized on the cache's scale, the graph's last step
        out = fresh[cache]
        computed = f"{out}_float"
        for node in graph.node:
            for i, name in enumerate(node.output):
                if name == out:
                    node.output[i] = computed
            for i, name in enumerate(node.input):
                if name == out:
                    node.input[i] = computed
        graph.node.append(helper.make_node("QuantizeLinear", [computed, s, zero], [out]))
        outputs[out].type.tensor_type.elem_type = TensorProto.INT8
    # the scales and zero points the pairs had before (and any initializer nothing reads)
    read = {name for node in graph.node for name in node.input}
    unread = [init for init in graph.initializer if init.name not in read]
    for init in unread:
        graph.initializer.remove(init)


def _scalar(name: str, constants: Mapping[str, onnx.TensorProto]) -> float | None:
    """The value of a one-element constant, or None where `name` is not one."""
    init = constants.get(name)
    if init is None:
        return None
    value = numpy_helper.to_array(init)
    return float(value.reshape(-1)[0]) if value.size == 1 else None
