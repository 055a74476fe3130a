"""A lean install runs a package: what the core needs imports without the extras, and a
missing extra is named where it is first needed (`rgtp._optional.require`)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest

from rgtp._optional import require

# Everything the extras bring that running a package must not need (pyproject.toml).
EXTRAS_ONLY = (
    "matplotlib",
    "skimage",
    "pycocotools",
    "av",
    "polygraphy",
    "onnxscript",
    "onnxruntime",
    "PIL",
    "tritonclient",
)


def test_require_returns_the_module_when_present():
    import json

    assert require("json", "eval") is json


def test_require_names_the_extra_of_a_missing_module():
    with pytest.raises(ImportError) as caught:
        require("rgtp_test_absent_module", "video")
    assert str(caught.value) == (
        "rgtp's video input needs rgtp_test_absent_module: pip install 'rgtp[video]'"
    )
    with pytest.raises(ImportError, match=r"PyAV: pip install 'rgtp\[video\]'"):
        require("av.rgtp_test_absent_submodule", "video")
    # the two ONNX Runtime flavours exclude each other: the message offers both
    with pytest.raises(ImportError, match=r"'rgtp\[ort\]' \(CPU\) or 'rgtp\[ort-gpu\]' \(CUDA\)"):
        require("rgtp_test_absent_module", "ort")


def test_a_present_module_that_fails_inside_is_not_blamed_on_its_extra(tmp_path, monkeypatch):
    (tmp_path / "rgtp_test_broken.py").write_text("import rgtp_test_absent_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as caught:
        require("rgtp_test_broken", "eval")
    assert caught.value.name == "rgtp_test_absent_dependency"
    assert "rgtp[" not in str(caught.value)


# Imports of the extras' modules fail as they would where they are not installed; the core
# then runs a pipeline on the torch backend, and the ORT backend names its extra.
LEAN_RUN = textwrap.dedent(
    """
    import importlib, importlib.abc, sys

    BLOCKED = set(sys.argv[1].split(","))

    class Absent(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, Absent())

    import numpy as np
    import torch

    from rgtp.families.detection.config import DetectorConfig, HeadConfig
    from rgtp.families.detection.detector import Detector
    from rgtp.models.config import BackboneConfig
    from rgtp.runtime import Pipeline

    torch.manual_seed(0)
    bb = BackboneConfig(img_size=64, embed_dim=32, depth=2, num_heads=2, window_size=2,
                        global_blocks=(1,), pretrain_grid=4)
    cfg = DetectorConfig(name="lean", backbone=bb, head=HeadConfig(
        num_classes=2, neck_channels=16, head_channels=16, group_norm_groups=4))
    pipe = Pipeline.from_model(Detector(cfg).eval(), buckets=[4, 16])
    stream = pipe.new_stream()
    rng = np.random.default_rng(0)
    ks = [stream.step(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).k
          for _ in range(3)]
    print("k", ks)
    loaded = sorted({m.split(".")[0] for m in sys.modules} & BLOCKED)
    print("loaded", loaded)
    from rgtp.cli import main

    # rgtp flops needs no extra (its families' training, evaluation and demo stay unloaded)
    print("flops", [main(["flops", "--model", m, "-q"]) for m in ("vitdet-small", "vivit-small")])
    for name, module in (("ort", "rgtp.engines.ort_backend"), ("viz", "rgtp.viz.overlay"),
                         ("check", "rgtp.export.check")):
        try:
            importlib.import_module(module)
        except ImportError as e:
            print(f"{name}:", e)
    """
)


def test_the_core_runs_a_pipeline_without_the_extras():
    run = subprocess.run(
        [sys.executable, "-c", LEAN_RUN, ",".join(EXTRAS_ONLY)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert re.search(r"^k \[\d+, \d+, \d+\]$", run.stdout, re.M), run.stdout  # three steps
    assert "loaded []" in run.stdout
    assert "flops [0, 0]" in run.stdout
    assert (
        "ort: rgtp's ONNX Runtime backend needs onnxruntime: pip install 'rgtp[ort]' (CPU) "
        "or 'rgtp[ort-gpu]' (CUDA), not both"
    ) in run.stdout
    assert "viz: rgtp's drawing needs matplotlib: pip install 'rgtp[viz]'" in run.stdout
    assert (
        "check: rgtp's graph comparison (rgtp check) needs Polygraphy: pip install 'rgtp[export]'"
    ) in run.stdout
