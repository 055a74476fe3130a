"""ONNX Runtime's execution providers for a device: the CUDA provider runs on the GPU the
engines were asked for, not GPU 0 (checked on the CPU: the list is what sessions get)."""

from __future__ import annotations

import pytest
import torch

from rgtp.engines.base import EngineError
from rgtp.engines.ort_backend import _providers

GPU_BUILD = ["CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.mark.parametrize("device, index", [("cuda:1", 1), ("cuda:0", 0), ("cuda", 0)])
def test_the_cuda_provider_is_given_the_device_index(device: str, index: int) -> None:
    assert _providers(torch.device(device), GPU_BUILD) == [
        ("CUDAExecutionProvider", {"device_id": index}),
        "CPUExecutionProvider",
    ]


def test_cpu_sessions_use_the_cpu_provider_only() -> None:
    assert _providers(torch.device("cpu"), GPU_BUILD) == ["CPUExecutionProvider"]


def test_cuda_without_onnxruntime_gpu_is_refused() -> None:
    with pytest.raises(EngineError, match=r"device cuda needs onnxruntime-gpu .*installed"):
        _providers(torch.device("cuda:1"), ["CPUExecutionProvider"])
