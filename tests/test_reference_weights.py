"""One copy of the weights: `rgtp export --no-reference` leaves the model's weights
(model.safetensors) out of a package, whose graphs' weight files then hold each weight once;
what needs them (the torch backend, `rgtp check`'s comparison) says so, and int8 packages
keep or drop them alike. Packages come from `quick_export` (one-node graphs around real
weights and manifests)."""

from __future__ import annotations

import pytest
from conftest import tiny_plan

from rgtp.engines.base import EngineError
from rgtp.engines.torch_backend import load_torch_engines
from rgtp.export.check import check_package
from rgtp.export.ensure import ensure_package
from rgtp.export.onnx_graphs import ExportError
from rgtp.export.package import MODEL_WEIGHTS, export_package
from rgtp.export.quantized_package import quantize_package
from rgtp.package.manifest import Manifest
from rgtp.package.verify import load_verified


@pytest.fixture
def packages(tiny_detector, quick_export, tmp_path):
    """The tiny detector exported with and without its reference weights."""
    plan = tiny_plan(tiny_detector.cfg)
    export_package(tiny_detector, plan, tmp_path / "with", progress=False)
    export_package(tiny_detector, plan, tmp_path / "without", progress=False, reference=False)
    return tmp_path / "with", tmp_path / "without"


def test_a_package_without_reference_holds_no_model_weights(packages):
    with_ref, without = packages
    full, lean = Manifest.load(with_ref), Manifest.load(without)
    assert full.model_weights == MODEL_WEIGHTS and (with_ref / MODEL_WEIGHTS).is_file()
    assert lean.model_weights is None and not (without / MODEL_WEIGHTS).exists()
    assert set(full.files) - set(lean.files) == {MODEL_WEIGHTS}
    # the graphs' weights are the same files either way
    for name in lean.files:
        assert lean.files[name]["sha256"] == full.files[name]["sha256"], name
    load_verified(without, True)  # a complete package as it is


def test_what_needs_the_reference_says_so(packages, tiny_detector):
    _, without = packages
    with pytest.raises(EngineError, match=r"no reference weights \(exported with --no-reference"):
        load_torch_engines(without)
    report = check_package(without, progress=False)
    assert not report.passed
    assert any(p.startswith("no reference weights") for p in report.problems), report.problems
    # a package with no weights to compare is not reused as the model's
    with pytest.raises(ExportError, match=r"no weights to compare with the model's"):
        ensure_package(tiny_detector, tiny_plan(tiny_detector.cfg), without, progress=False)


def test_int8_packages_keep_or_drop_the_reference(packages, tmp_path):
    with_ref, without = packages
    kept = quantize_package(with_ref, tmp_path / "kept", progress=False)
    assert kept.files[MODEL_WEIGHTS] == Manifest.load(with_ref).files[MODEL_WEIGHTS]
    dropped = quantize_package(with_ref, tmp_path / "dropped", progress=False, reference=False)
    assert dropped.model_weights is None and not (tmp_path / "dropped" / MODEL_WEIGHTS).exists()
    lean = quantize_package(without, tmp_path / "lean", progress=False)
    assert lean.model_weights is None and MODEL_WEIGHTS not in lean.files
    load_verified(tmp_path / "lean", True)


def test_rgtp_export_keeps_the_reference_unless_told_not_to():
    from rgtp.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["export", "--out", "pkg"]).reference is True
    assert parser.parse_args(["export", "--no-reference", "--out", "pkg"]).reference is False
