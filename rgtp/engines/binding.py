"""Binding a graph's tensors for backends that run on caller-owned memory (ONNX Runtime's
`IOBinding`, TensorRT's tensor addresses): one loop for every such backend.

Inputs become contiguous tensors of the spec's dtypes on the engine's device (a feed that
already is one is bound in place), outputs are allocated at the shapes the spec gives for
the inputs' symbolic sizes, and the backend binds each tensor by its address.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch

from rgtp.engines.base import check_feeds
from rgtp.engines.dtypes import dtype
from rgtp.package.plan import GraphSpec, TensorSpec


class Binder(Protocol):
    def __call__(self, spec: TensorSpec, tensor: torch.Tensor, output: bool) -> None:
        """Bind `tensor` (contiguous, of spec's dtype, on the engine's device) as `spec`."""
        ...


def input_buffers(
    spec: GraphSpec, feeds: Mapping[str, torch.Tensor], device: torch.device
) -> dict[str, torch.Tensor]:
    """The inputs, checked against `spec` (`check_feeds`), as contiguous tensors of its
    dtypes on `device`; copies are made only where a feed is not one already."""
    check_feeds(spec, feeds)
    return {
        t.name: feeds[t.name].to(device=device, dtype=dtype(t.dtype).torch).contiguous()
        for t in spec.inputs
    }


def bind_io(
    spec: GraphSpec, feeds: Mapping[str, torch.Tensor], device: torch.device, bind: Binder
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Inputs and outputs of one run, each handed to `bind` (inputs first).

    Returns (inputs, outputs): keep the inputs alive until the run has read them; the
    outputs are new tensors, shaped for this run's symbolic sizes (e.g. K rows)."""
    inputs = input_buffers(spec, feeds, device)
    dims = spec.symbolic_dims({name: x.shape for name, x in inputs.items()})
    outputs = {
        t.name: torch.empty(t.concrete(dims), dtype=dtype(t.dtype).torch, device=device)
        for t in spec.outputs
    }
    for t in spec.inputs:
        bind(t, inputs[t.name], output=False)
    for t in spec.outputs:
        bind(t, outputs[t.name], output=True)
    return inputs, outputs
