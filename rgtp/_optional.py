"""Optional dependencies: imported where first needed, and named by the extra that installs
them when missing.

The core install (`pip install rgtp` plus an ONNX Runtime flavour) runs a package; the rest
is for exporting, evaluating, drawing, training and serving (pyproject.toml's extras,
docs/install.md). A module that needs one of those imports it through `require`, so that a
lean install fails with the line to fix it rather than a bare ModuleNotFoundError.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# extra -> what rgtp does with it, as the message says it ("rgtp's <use> needs ...")
USES = {
    "ort": "ONNX Runtime backend",
    "video": "video input",
    "export": "exporter",
    "eval": "evaluation",
    "viz": "drawing",
    "train": "training",
    "serve": "Triton serving",
    "trt": "TensorRT backend",
    "openvino": "OpenVINO backend",
    "client": "Triton client",
}

# top-level module -> the distribution that provides it, where the names differ
DISTRIBUTIONS = {
    "av": "PyAV",
    "skimage": "scikit-image",
    "PIL": "Pillow",
    "polygraphy": "Polygraphy",
    "tritonclient": "tritonclient",
    "tensorrt_rtx": "TensorRT-RTX",
}


def require(module: str, extra: str, use: str | None = None) -> ModuleType:
    """`module` imported, or ImportError naming the extra that installs it, e.g.
    "rgtp's video input needs PyAV: pip install 'rgtp[video]'".

    use: what needs it, when the extra's own name says too little (default `USES[extra]`).
    A module that is present but fails to import for another reason (a missing library of
    its own) is reported as it is, with the hint chained, not hidden behind it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        missing = getattr(e, "name", None)
        if isinstance(e, ModuleNotFoundError) and missing and missing.split(".")[0] != top:
            raise  # the module is there; something it imports is not
        dist = DISTRIBUTIONS.get(top, top)
        what = use or USES.get(extra, extra)
        hint = f"pip install 'rgtp[{extra}]'"
        if extra == "ort":  # the two flavours exclude each other: name both
            hint = "pip install 'rgtp[ort]' (CPU) or 'rgtp[ort-gpu]' (CUDA), not both"
        raise ImportError(f"rgtp's {what} needs {dist}: {hint}", name=module) from e
