"""Engine backends behind one protocol: torch (reference), ort (ONNX Runtime), trt (TensorRT),
openvino (OpenVINO)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rgtp.engines.base import LAYOUTS, Engine, EngineError, EngineSet

BACKENDS = ("torch", "ort", "trt", "openvino")


def load_engines(
    package: Path, backend: str, verify: bool = True, digest: str | None = None, **options: Any
) -> EngineSet:
    """Engines for every graph of an exported package on the named backend.

    Every backend first checks the sha256 of every file the manifest lists and refuses a
    package that fails (ManifestError naming the files). `verify=False` skips the hashing
    (sizes are still checked, and a warning names the unverified files): for packages
    verified elsewhere, e.g. once at deployment. `digest`: the package digest pinned
    ("sha256:<hex>", as `rgtp check` prints it); a package with any other manifest is
    refused (ManifestError naming both digests) before anything in it is read."""
    if backend == "torch":
        from rgtp.engines.torch_backend import load_torch_engines

        return load_torch_engines(package, verify=verify, digest=digest, **options)
    if backend == "ort":
        from rgtp.engines.ort_backend import load_ort_engines

        return load_ort_engines(package, verify=verify, digest=digest, **options)
    if backend == "trt":
        from rgtp.engines.trt_backend import load_trt_engines

        return load_trt_engines(package, verify=verify, digest=digest, **options)
    if backend == "openvino":
        from rgtp.engines.openvino_backend import load_openvino_engines  # needs rgtp[openvino]

        return load_openvino_engines(package, verify=verify, digest=digest, **options)
    raise EngineError(f"unknown backend {backend!r}; choose from {BACKENDS}")


__all__ = ["BACKENDS", "LAYOUTS", "Engine", "EngineError", "EngineSet", "load_engines"]
