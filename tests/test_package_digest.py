"""The package digest (the sha256 of manifest.json, which lists every other file's sha256):
export and `rgtp check` print it, and a load, a build or a Triton repository pinned to it
refuses any other manifest, on every backend. Also `Pipeline.close()` / `with`, and the
package's version.

Packages come from `quick_export` (one-node graphs): the digest is checked before any graph
is read, and the torch and ort loads that succeed only open what they are given."""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import json
import re
import sys
import types
import weakref
from pathlib import Path

import pytest

import rgtp
from rgtp.cli import main
from rgtp.engines.base import EngineError
from rgtp.engines.trt_build import BuildOptions, build_trt
from rgtp.export.check import check_package
from rgtp.export.package import export_package
from rgtp.package.manifest import Manifest, ManifestError, package_digest
from rgtp.runtime import Pipeline
from tests.conftest import tiny_plan

BACKENDS = ("torch", "ort", "trt", "openvino")
WRONG = "sha256:" + "0" * 64


@pytest.fixture
def pkg(tiny_detector, quick_export, tmp_path) -> Path:
    path = tmp_path / "pkg"
    export_package(tiny_detector, tiny_plan(tiny_detector.cfg), path, progress=False)
    return path


def tamper(pkg: Path) -> None:
    """The issue's one-byte edit: novelty_share 0.0 -> 0.9, the files untouched."""
    path = pkg / "manifest.json"
    text = path.read_text()
    assert text.count('"novelty_share": 0.0,') == 1
    path.write_text(text.replace('"novelty_share": 0.0,', '"novelty_share": 0.9,'))


def load(pkg: Path, backend: str, **options) -> Pipeline:
    return Pipeline.load(pkg, backend, device="cuda" if backend == "trt" else "cpu", **options)


def test_the_digest_is_the_sha256_of_the_manifest_as_written(tiny_detector, quick_export, tmp_path):
    manifest = export_package(
        tiny_detector, tiny_plan(tiny_detector.cfg), tmp_path / "pkg", progress=False
    )
    raw = (tmp_path / "pkg" / "manifest.json").read_bytes()
    assert manifest.digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert package_digest(tmp_path / "pkg") == manifest.digest
    assert Manifest.load(tmp_path / "pkg").digest == manifest.digest


def test_check_prints_the_digest(pkg, capsys):
    digest = package_digest(pkg)
    assert check_package(pkg, progress=False).digest == digest
    main(["check", str(pkg), "--quiet"])  # one-node graphs fail the comparison; the digest shows
    assert f"digest {digest}" in capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_one_byte_manifest_edit_is_refused_when_pinned(pkg, backend):
    digest = package_digest(pkg)
    tamper(pkg)
    found = package_digest(pkg)
    with pytest.raises(ManifestError) as e:
        load(pkg, backend, digest=digest)
    assert f"package digest {found}, expected {digest}" in str(e.value)
    with pytest.raises(ManifestError, match=re.escape(digest)):
        load(pkg, backend, digest=digest, verify=False)  # a pin holds without hashing too


@pytest.mark.parametrize("backend", ["torch", "ort"])
def test_the_edit_loads_unpinned_and_the_pin_loads_what_it_pinned(pkg, backend):
    load(pkg, backend, digest=package_digest(pkg)).close()
    tamper(pkg)
    with load(pkg, backend) as pipe:  # what a digest guards against: it loads as before
        assert pipe.plan.config.pruning.novelty_share == pytest.approx(0.9)


@pytest.mark.parametrize("backend", ["torch", "ort"])
def test_a_wrong_or_malformed_digest_is_refused(pkg, backend):
    with pytest.raises(ManifestError, match=f"package digest {package_digest(pkg)}, expected"):
        load(pkg, backend, digest=WRONG)
    with pytest.raises(ManifestError, match="not a package digest; expected sha256:<64 hex"):
        load(pkg, backend, digest=package_digest(pkg).removeprefix("sha256:"))
    load(pkg, backend, digest=package_digest(pkg).upper().replace("SHA256", "sha256")).close()


def test_rgtp_run_digest_refuses_another_package(pkg, tmp_path, capsys):
    code = main(["run", str(pkg), "--synthetic", "2", "--digest", WRONG, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code != 0
    assert f"package digest {package_digest(pkg)}, expected {WRONG}" in err
    assert not (tmp_path / "detections.json").exists()


def test_rgtp_build_digest_refuses_before_building(pkg):
    digest = package_digest(pkg)
    tamper(pkg)
    with pytest.raises(ManifestError, match=f"expected {digest}"):
        build_trt(pkg, BuildOptions(), progress=False, digest=digest)
    assert main(["build", str(pkg), "--digest", digest, "--quiet"]) != 0


def test_the_triton_repository_serves_the_package_it_pins(pkg, tmp_path, monkeypatch):
    from rgtp.serving import ServingSettings, write_repository
    from rgtp.serving.model_config import PACKAGE_PARAMETER
    from rgtp.serving.repository import PACKAGE_DIR, TEMPLATE, VERSION

    digest = package_digest(pkg)
    with pytest.raises(ManifestError, match=f"expected {WRONG}"):
        write_repository(pkg, tmp_path / "refused", ServingSettings(), digest=WRONG)
    model = write_repository(pkg, tmp_path / "repo", ServingSettings(), digest=digest)
    config = (model / "config.pbtxt").read_text()
    assert f'key: "{PACKAGE_PARAMETER}"' in config and f'string_value: "{digest}"' in config
    copy = model / VERSION / PACKAGE_DIR
    tamper(copy)

    # The backend model as Triton's stub runs it, with a stand-in for the stub's module:
    # it loads nothing but the package of the pinned digest.
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", types.ModuleType("pb"))
    spec = importlib.util.spec_from_file_location("rgtp_model", TEMPLATE)
    backend_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(backend_model)
    parameters = {
        "rgtp_settings": ServingSettings().to_json(),
        PACKAGE_PARAMETER: digest,
    }
    args = {
        "model_config": json.dumps(
            {"parameters": {k: {"string_value": v} for k, v in parameters.items()}}
        ),
        "model_repository": str(model),
        "model_version": VERSION,
        "model_name": model.name,
    }
    with pytest.raises(ManifestError, match=f"package digest {package_digest(copy)}, expected"):
        backend_model.TritonPythonModel().initialize(args)


def test_close_releases_the_engines_and_refuses_further_use(pkg, frames):
    with Pipeline.load(pkg, "ort") as pipe:
        stream = pipe.new_stream()
        session = weakref.ref(pipe.engines.embed)
    assert pipe.closed
    gc.collect()
    assert session() is None  # nothing holds the ONNX Runtime session any more
    for use in (pipe.new_stream, lambda: stream.step(frames[0]), lambda: pipe.step_many([], [])):
        with pytest.raises(EngineError, match=r"closed \(Pipeline.close\)"):
            use()
    pipe.close()  # again: nothing to do


def test_the_version_is_the_installed_distributions(capsys):
    from importlib.metadata import version

    assert rgtp.__version__ == version("rgtp")
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"rgtp {rgtp.__version__}"
    assert (Path(rgtp.__file__).parent / "py.typed").is_file()


def test_rgtp_export_prints_the_digest_of_what_it_wrote(quick_export, tmp_path, capsys):
    out = tmp_path / "pkg"
    argv = ["export", "--model", "vitdet-small", "--random-init", "--buckets", "64"]
    assert main([*argv, "--workers", "1", "--quiet", "--out", str(out)]) == 0
    assert f"digest {package_digest(out)}" in capsys.readouterr().out.splitlines()
