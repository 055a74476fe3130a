"""Packages are trusted only after verification, and exports never delete what they did not
write: manifest schema, file names inside the package, sha256 before every load and build,
`rgtp check` as FAIL lines, `--force` semantics, SIGTERM and stale work directories, modes.

Every test tampers with a copy of a `small_packages` package, never the fixture itself."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest

from rgtp.cli import main
from rgtp.engines.base import EngineError
from rgtp.export import package as package_module
from rgtp.export.check import CheckError, check_package
from rgtp.export.onnx_graphs import ExportError
from rgtp.export.package import export_package, remove_stale_work_dirs
from rgtp.package import verify as verify_module
from rgtp.package.manifest import Manifest, ManifestError, sha256_file
from rgtp.package.plan import StagePlan
from rgtp.runtime import Pipeline

REPO = Path(__file__).resolve().parents[1]
BACKENDS = ("ort", "torch", "trt")


@pytest.fixture
def pkg(small_packages, tmp_path) -> Path:
    """A copy of vitdet-small package "b" (one stage, buckets 96 and 256, symbolic K)."""
    dst = tmp_path / "pkg"
    shutil.copytree(small_packages["b"][0], dst)
    return dst


def edit_manifest(pkg: Path, change: Callable[[dict], object]) -> None:
    """Write `change(manifest JSON)` as the manifest."""
    path = pkg / "manifest.json"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def mutate(change: Callable[[dict], object]) -> Callable[[dict], dict]:
    """`change` applied in place, the manifest returned."""
    return lambda d: (change(d), d)[1]


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def rehash(pkg: Path, name: str) -> None:
    """Record `name`'s current content in the manifest: a package consistent but crafted."""
    record = {"sha256": sha256_file(pkg / name), "bytes": (pkg / name).stat().st_size}
    edit_manifest(pkg, mutate(lambda d: d["files"].__setitem__(name, record)))


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def load(pkg: Path, backend: str, **options):
    device = "cuda" if backend == "trt" else "cpu"
    return Pipeline.load(pkg, backend, device=device, **options)


def tree(root: Path) -> dict[str, str]:
    """Every file under `root` with its content's sha256: a snapshot to compare."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# -- the manifest: schema version, types, required fields, cross-references -----------------


def _drop_graphs(*names: str) -> Callable[[dict], dict]:
    return mutate(lambda d: d.update(graphs=[g for g in d["graphs"] if g["name"] not in names]))


def _set_graph(graph: str, **fields: object) -> Callable[[dict], dict]:
    return mutate(lambda d: next(g for g in d["graphs"] if g["name"] == graph).update(fields))


MALFORMED = {
    "a JSON list": (lambda d: [d], "expected a JSON object, found an array"),
    "schema version 7": (
        mutate(lambda d: d.update(schema_version=7)),
        "schema version 7; this rgtp reads 2",
    ),
    "a file without sha256": (
        mutate(lambda d: d["files"]["embed.onnx"].pop("sha256")),
        "files/embed.onnx: 'sha256' is a required property",
    ),
    "a short sha256": (
        mutate(lambda d: d["files"]["embed.onnx"].update(sha256="abc")),
        "files/embed.onnx/sha256: 'abc' does not match",
    ),
    "bytes as a string": (
        mutate(lambda d: d["files"]["embed.onnx"].update(bytes="8235")),
        "files/embed.onnx/bytes: '8235' is not of type 'integer'",
    ),
    "opset as a string": (
        mutate(lambda d: d.update(opset="18")),
        "opset: '18' is not of type 'integer'",
    ),
    "no files": (mutate(lambda d: d.pop("files")), "top level: 'files' is a required property"),
    "a graph file not listed": (
        mutate(lambda d: d["files"].pop("head.onnx")),
        "graph 'head': 'head.onnx' is not listed in files",
    ),
    "a bucket without a graph": (
        _drop_graphs("stage0_k96", "stage0_kK"),
        "stage 0 has no graph for K bucket 96 (no fixed-K graph, no symbolic-K graph)",
    ),
    "no embed graph": (_drop_graphs("embed"), "expected one embed graph, found 0"),
    "a stage the plan lacks": (
        _set_graph("stage0_k96", stage=5),
        "graph 'stage0_k96': stage 5, the plan has 1 stages",
    ),
    "a graph name with a slash": (
        _set_graph("stage0_k96", name="../stage0_k96"),
        "graphs/1/name: '../stage0_k96' does not match",
    ),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_manifests_are_refused_naming_the_problem(pkg, capsys, case: str) -> None:
    change, message = MALFORMED[case]
    edit_manifest(pkg, change)
    with pytest.raises(ManifestError, match=re.escape(message)):
        Manifest.load(pkg)
    code, out, err = cli(["check", str(pkg), "--quiet"], capsys)
    assert code == 1
    assert any(line.startswith("FAIL ") and message in line for line in out.splitlines()), out
    assert "Traceback" not in out + err


def test_fixed_k_sessions_need_a_graph_for_every_bucket(pkg) -> None:
    """Symbolic-K serves the missing bucket; the per-k layout cannot and says so."""
    edit_manifest(pkg, _drop_graphs("stage0_k96"))
    Pipeline.load(pkg, "ort", layout="per-stage")
    with pytest.raises(EngineError, match=re.escape("stage 0 has no fixed-K graph for K=[96]")):
        Pipeline.load(pkg, "ort", layout="per-k")


# -- file names: absolute, '..', symbolic links out of the package ---------------------------


def _escape(pkg: Path, how: str) -> str:
    """Make head.onnx a file outside the package (with its real sha256) by `how`; returns
    the message that refuses it."""
    outside = pkg.parent / "outside"
    outside.mkdir()
    shutil.copy(pkg / "head.onnx", outside / "head.onnx")
    if how == "symlink":
        (pkg / "head.onnx").unlink()
        (pkg / "head.onnx").symlink_to(outside / "head.onnx")
        return "outside the package"
    if how == "symlink loop":
        (pkg / "head.onnx").unlink()
        (pkg / "head.onnx").symlink_to(pkg / "head.onnx")
        return "file name 'head.onnx' cannot be resolved (Symlink loop"
    name = str(outside / "head.onnx") if how == "absolute" else "../outside/head.onnx"

    def rename(d: dict) -> None:
        d["files"][name] = d["files"].pop("head.onnx")
        next(g for g in d["graphs"] if g["name"] == "head")["file"] = name

    edit_manifest(pkg, mutate(rename))
    (pkg / "head.onnx").unlink()
    return "is absolute" if how == "absolute" else "has a '..' part"


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink", "symlink loop"])
@pytest.mark.parametrize("consumer", ["check", "build", *BACKENDS])
def test_names_outside_the_package_are_refused(pkg, capsys, how: str, consumer: str) -> None:
    message = _escape(pkg, how)
    if consumer == "check":
        code, out, err = cli(["check", str(pkg), "--quiet"], capsys)
        assert code == 1 and "Traceback" not in out + err
        assert any(line.startswith("FAIL ") and message in line for line in out.splitlines())
    elif consumer == "build":
        before = tree(pkg)
        code, _, err = cli(["build", str(pkg), "--quiet"], capsys)
        assert code == 1 and message in err, err
        assert tree(pkg) == before  # nothing built, manifest untouched
    else:
        with pytest.raises(ManifestError, match=re.escape(message)):
            load(pkg, consumer)


# what a backend says of a graph whose weights are read from outside its package
FOREIGN_WEIGHTS = "embed.onnx: its weights are read from '../evil.weights', the manifest lists"


def point_weights_outside(pkg: Path) -> None:
    """embed.onnx's external data moved to a copy beside the package, the manifest rehashed."""
    shutil.copy(pkg / "embed.weights", pkg.parent / "evil.weights")
    model = onnx.load(str(pkg / "embed.onnx"), load_external_data=False)
    for init in model.graph.initializer:
        for e in init.external_data:
            if e.key == "location":
                e.value = "../evil.weights"
    onnx.save(model, str(pkg / "embed.onnx"))
    rehash(pkg, "embed.onnx")


def test_external_data_outside_the_package_is_refused(pkg, capsys) -> None:
    """A graph may name its own weights file; it must be the one the manifest lists."""
    point_weights_outside(pkg)
    message = FOREIGN_WEIGHTS
    code, out, _ = cli(["check", str(pkg), "--quiet"], capsys)
    assert code == 1 and f"FAIL {message}" in out, out
    with pytest.raises(EngineError, match=re.escape(message)):
        load(pkg, "ort")
    code, _, err = cli(["build", str(pkg), "--quiet"], capsys)
    assert code == 1 and message in err
    assert not (pkg / "trt").exists()


# -- sha256 before every load and build ------------------------------------------------------

VICTIMS = [
    "stage0_kK.onnx",
    "stage0_k96.onnx",
    "stage0.weights",
    "model.safetensors",
    "head.weights",
    "embed.onnx",
]


@pytest.mark.parametrize("victim", VICTIMS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_flipped_byte_anywhere_stops_every_backend(pkg, backend: str, victim: str) -> None:
    flip_byte(pkg / victim)
    with pytest.raises(ManifestError, match=rf"{re.escape(victim)}: sha256 differs"):
        load(pkg, backend)


def test_verification_names_every_missing_resized_and_changed_file(
    tiny_detector, quick_export, tmp_path
) -> None:
    """What every load starts with, on a package of stand-in graphs (the fast tier's check
    of it; the tests on `pkg` check it through every backend and the CLI)."""
    out = tmp_path / "pkg"
    manifest = export_package(tiny_detector, StagePlan.create(tiny_detector.cfg, [64]), out)
    assert set(verify_module.verify_package(out, manifest)) == set(manifest.files)
    (out / "embed.onnx").unlink()
    with open(out / "head.weights", "ab") as f:
        f.write(b"\0")
    flip_byte(out / "model.safetensors")
    with pytest.raises(ManifestError) as caught:
        verify_module.verify_package(out, manifest)
    assert "package fails verification" in str(caught.value)
    assert "embed.onnx: missing" in str(caught.value)
    assert re.search(r"head\.weights: \d+ bytes, manifest says \d+", str(caught.value))
    assert "model.safetensors: sha256 differs from the manifest" in str(caught.value)
    with pytest.raises(ManifestError) as caught:
        verify_module.verify_package(out, manifest, verify=False)  # sizes, not hashes
    assert "embed.onnx" in str(caught.value) and "model.safetensors" not in str(caught.value)


def test_build_refuses_a_tampered_package_before_building(pkg, capsys) -> None:
    flip_byte(pkg / "stage0.weights")
    before = tree(pkg)
    code, _, err = cli(["build", str(pkg), "--quiet"], capsys)
    assert code == 1
    assert "package fails verification: stage0.weights: sha256 differs" in err, err
    assert tree(pkg) == before and not (pkg / "trt").exists()


@pytest.mark.parametrize("backend", ["ort", "torch"])
def test_each_file_is_hashed_once_per_load(pkg, monkeypatch, backend: str) -> None:
    hashed: Counter[str] = Counter()
    real = verify_module.sha256_file

    def counting(path: Path) -> str:
        hashed[path.name] += 1
        return real(path)

    monkeypatch.setattr(verify_module, "sha256_file", counting)
    load(pkg, backend)
    assert hashed == Counter({Path(n).name: 1 for n in Manifest.load(pkg).files})


def test_verify_false_skips_hashes_with_a_warning_but_not_sizes(pkg, caplog) -> None:
    flip_byte(pkg / "head.weights")
    with caplog.at_level("WARNING", logger="rgtp.package.verify"):
        Pipeline.load(pkg, "ort", verify=False)
    warning = caplog.records[-1].getMessage()
    assert "sha256 verification of" in warning and "skipped (verify=False)" in warning
    assert "head.weights" in warning
    (pkg / "stage0.weights").unlink()
    with pytest.raises(ManifestError, match=r"stage0\.weights: missing"):
        Pipeline.load(pkg, "ort", verify=False)


def test_unreadable_files_are_problem_lines(pkg, monkeypatch, capsys) -> None:
    """Tests run as root, where chmod does not stop reads: the read itself is made to fail."""
    real = verify_module.sha256_file

    def denied(path: Path) -> str:
        if path.name == "stage0.weights":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(verify_module, "sha256_file", denied)
    message = "stage0.weights: cannot read it (Permission denied)"
    with pytest.raises(ManifestError, match=re.escape(message)):
        load(pkg, "torch")
    code, out, err = cli(["check", str(pkg), "--quiet"], capsys)
    assert code == 1 and "Traceback" not in out + err
    assert any(line.startswith("FAIL ") and message in line for line in out.splitlines())


def test_an_unreadable_manifest_is_a_problem_line(pkg, monkeypatch, capsys) -> None:
    real = Path.read_bytes

    def denied(self: Path) -> bytes:
        if self.name == "manifest.json":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    code, out, err = cli(["check", str(pkg), "--quiet"], capsys)
    assert code == 1 and "Traceback" not in out + err
    assert "manifest.json: cannot read it (Permission denied)" in out


def test_check_reports_an_unloadable_reference_instead_of_raising(pkg, capsys) -> None:
    (pkg / "model.safetensors").write_text("not a safetensors file")
    rehash(pkg, "model.safetensors")
    code, out, err = cli(["check", str(pkg), "--quiet"], capsys)
    assert code == 1 and "Traceback" not in out + err
    assert "FAIL model.safetensors: cannot load it" in out


@pytest.mark.parametrize("flag", ["--atol", "--rtol"])
@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_check_tolerances_must_be_finite_and_non_negative(pkg, capsys, flag, value) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["check", str(pkg), flag, value])
    assert exit_.value.code == 2
    name = flag.removeprefix("--")
    expected = f"argument {flag}: {name} must be a finite number >= 0, got {float(value)}"
    assert expected in capsys.readouterr().err
    with pytest.raises(CheckError, match="must be a finite number >= 0"):
        check_package(pkg, **{name: float(value)})


# -- exports: what --force may replace, and what is refused ----------------------------------


def _non_package(tmp_path: Path) -> str:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    return str(tmp_path / "mine")


def _cwd_with_a_file(tmp_path: Path, monkeypatch, out: str) -> str:
    (tmp_path / "notes.txt").write_text("keep me")
    monkeypatch.chdir(tmp_path)
    return out


def _parent_of_cwd(tmp_path: Path, monkeypatch) -> str:
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    return ".."


def _a_file(tmp_path: Path) -> str:
    (tmp_path / "model.onnx").write_text("not a directory")
    return str(tmp_path / "model.onnx")


def _package_with_notes(tmp_path: Path, small_packages) -> str:
    shutil.copytree(small_packages["b"][0], tmp_path / "pkg")
    (tmp_path / "pkg" / "notes.txt").write_text("my measurements")
    return str(tmp_path / "pkg")


def _package(tmp_path: Path, small_packages) -> str:
    shutil.copytree(small_packages["b"][0], tmp_path / "pkg")
    return str(tmp_path / "pkg")


REFUSED_OUT = {
    "non-package dir": (lambda t, m, s: _non_package(t), False, "holds no rgtp package"),
    "non-package dir --force": (lambda t, m, s: _non_package(t), True, "holds no rgtp package"),
    "'' in cwd --force": (
        lambda t, m, s: _cwd_with_a_file(t, m, ""),
        True,
        "the output directory is empty ('')",
    ),
    "'.' --force": (
        lambda t, m, s: _cwd_with_a_file(t, m, "."),
        True,
        "it is the working directory",
    ),
    "'..' --force": (
        lambda t, m, s: _parent_of_cwd(t, m),
        True,
        "it is a parent of the working directory",
    ),
    "'/' --force": (lambda t, m, s: "/", True, "it is the file system root"),
    "a regular file --force": (lambda t, m, s: _a_file(t), True, "is a file"),
    "package + foreign file --force": (
        lambda t, m, s: _package_with_notes(t, s),
        True,
        "files rgtp did not write (notes.txt)",
    ),
    "package without --force": (
        lambda t, m, s: _package(t, s),
        False,
        "holds an rgtp package; pass --force to replace it",
    ),
}


@pytest.mark.parametrize("case", REFUSED_OUT)
def test_export_deletes_nothing_of_the_users(
    tmp_path, monkeypatch, capsys, small_packages, case: str
) -> None:
    make, force, message = REFUSED_OUT[case]
    out = make(tmp_path, monkeypatch, small_packages)
    before, entries = tree(tmp_path), sorted(p.name for p in tmp_path.rglob("*"))
    argv = ["export", "--random-init", "--quiet", "--out", out, *(["--force"] if force else [])]
    code, _, err = cli(argv, capsys)
    assert code == 1 and message in err, err
    assert tree(tmp_path) == before  # every file, byte for byte
    assert sorted(p.name for p in tmp_path.rglob("*")) == entries  # and no work directory


def _tiny_plan(det) -> StagePlan:
    return StagePlan.create(det.cfg, [64])


def test_force_replaces_an_earlier_package_and_leaves_nothing_else(
    tmp_path, small_packages, tiny_detector, quick_export
) -> None:
    out = Path(_package(tmp_path, small_packages))
    manifest = export_package(tiny_detector, _tiny_plan(tiny_detector), out, force=True)
    assert Manifest.load(out).plan.config.name == "tiny"
    assert [p.name for p in tmp_path.iterdir()] == ["pkg"]
    # the opset the graphs declare, not the one asked for (18)
    assert manifest.opset == Manifest.load(out).opset == 20
    assert manifest.versions["opset"] == "20"


def test_a_failed_export_keeps_the_earlier_package(
    tmp_path, small_packages, tiny_detector, monkeypatch
) -> None:
    out = Path(_package(tmp_path, small_packages))
    before = tree(tmp_path)

    def fails(*args, **kwargs):
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(package_module, "_export_into", fails)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        export_package(tiny_detector, _tiny_plan(tiny_detector), out, force=True)
    assert tree(tmp_path) == before and [p.name for p in tmp_path.iterdir()] == ["pkg"]


def test_a_failure_while_moving_in_restores_the_earlier_package(
    tmp_path, small_packages, tiny_detector, quick_export, monkeypatch
) -> None:
    out = Path(_package(tmp_path, small_packages))
    before = tree(tmp_path)
    real = Path.rename

    def rename(self: Path, target):
        if Path(target) == out and ".rgtp-tmp-" in self.name:  # the new package moving in
            raise OSError(28, "No space left on device")
        return real(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError, match="No space left"):
        export_package(tiny_detector, _tiny_plan(tiny_detector), out, force=True)
    assert tree(tmp_path) == before and [p.name for p in tmp_path.iterdir()] == ["pkg"]


def test_opset_below_the_exporters_minimum_is_refused(capsys, tiny_detector, tmp_path) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["export", "--random-init", "--opset", "5", "--out", str(tmp_path / "p")])
    assert exit_.value.code == 2
    assert "argument --opset: opset 5 cannot be exported: torch's exporter writes opsets 18.." in (
        capsys.readouterr().err
    )
    with pytest.raises(ExportError, match="opset 17 cannot be exported"):
        export_package(tiny_detector, _tiny_plan(tiny_detector), tmp_path / "p", opset=17)
    assert not any(tmp_path.iterdir())


def test_an_unwritable_parent_is_an_export_error(tmp_path, tiny_detector, monkeypatch) -> None:
    """Tests run as root, where chmod does not stop writes: the mkdtemp itself fails."""

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(package_module.tempfile, "mkdtemp", denied)
    with pytest.raises(ExportError, match=r"cannot write in .* \(Permission denied\)"):
        export_package(tiny_detector, _tiny_plan(tiny_detector), tmp_path / "pkg")
    assert list(tmp_path.iterdir()) == []


# -- modes -----------------------------------------------------------------------------------


def _modes(root: Path) -> set[tuple[str, int]]:
    return {
        ("dir" if p.is_dir() else "file", stat.S_IMODE(p.stat().st_mode))
        for p in [root, *root.rglob("*")]
    }


@pytest.mark.parametrize(
    ("private", "dir_mode", "file_mode"), [(False, 0o755, 0o644), (True, 0o700, 0o600)]
)
def test_package_modes(tmp_path, tiny_detector, quick_export, private, dir_mode, file_mode):
    out = tmp_path / "pkg"
    export_package(tiny_detector, _tiny_plan(tiny_detector), out, private=private)
    assert _modes(out) == {("dir", dir_mode), ("file", file_mode)}


# -- interrupted and killed exports ----------------------------------------------------------

_EXPORT_TINY = """
import sys
from rgtp.export.package import export_package
from rgtp.families.detection.detector import Detector
from rgtp.package.plan import StagePlan
from tests.conftest import tiny_config

detector = Detector(tiny_config())
export_package(detector, StagePlan.create(detector.cfg, [64]), sys.argv[1], progress=False)
"""


def test_sigterm_during_export_leaves_nothing(tmp_path) -> None:
    """No files, and no processes: the export's forked tracing workers (which share its
    command line) end with it, whenever the signal comes."""
    parent = tmp_path / "exports"
    parent.mkdir()
    out = str(parent / "pkg")
    proc = subprocess.Popen([sys.executable, "-c", _EXPORT_TINY, out], cwd=REPO)
    try:
        deadline = time.monotonic() + 300  # a guard against a hung test, not a timing check
        while not any(parent.glob(".pkg.rgtp-tmp-*")):
            assert proc.poll() is None, "the export ended before it could be interrupted"
            assert time.monotonic() < deadline, "no temporary directory appeared"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == -signal.SIGTERM  # still ends as SIGTERM ends it
        left = _processes_given(out)
    finally:
        proc.kill()
        for pid in _processes_given(out):  # never leave one behind, whatever failed
            os.kill(pid, signal.SIGKILL)
    assert list(parent.iterdir()) == []
    assert left == [], "tracing workers outlived the export"


def _processes_given(arg: str) -> list[int]:
    """The processes with `arg` on their command line (Linux's /proc; none elsewhere)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if arg.encode() in (entry / "cmdline").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone meanwhile
            continue
    return found


def test_sigterm_reaches_the_previous_handler_after_cleanup(
    tmp_path, tiny_detector, quick_export, monkeypatch
) -> None:
    """An application's own SIGTERM handler still gets the signal, once the export has
    removed its temporary directory, and is its handler again afterwards."""
    received = []

    def application_handler(signum, frame) -> None:
        received.append(sorted(p.name for p in tmp_path.iterdir()))

    stub = package_module.export_graph
    exporter = os.getpid()

    def terminated_while_tracing(module, spec, *args, **kwargs):
        # once, while tracing the first graph (in a worker of export.parallel or here)
        if spec.name == "embed":
            os.kill(exporter, signal.SIGTERM)
        return stub(module, spec, *args, **kwargs)

    monkeypatch.setattr(package_module, "export_graph", terminated_while_tracing)
    previous = signal.signal(signal.SIGTERM, application_handler)
    try:
        with pytest.raises(ExportError, match="export interrupted by SIGTERM"):
            export_package(tiny_detector, _tiny_plan(tiny_detector), tmp_path / "pkg")
        assert signal.getsignal(signal.SIGTERM) is application_handler
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert received == [[]]  # called once, with the temporary directory already gone
    assert list(tmp_path.iterdir()) == []


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stale_work_directories_of_dead_exports_are_removed(
    tmp_path, tiny_detector, quick_export
) -> None:
    dead, live, host = _dead_pid(), os.getpid(), package_module._HOST
    stale = tmp_path / f".pkg.rgtp-tmp-{host}-{dead}-a1b2c3"
    stale_other_name = tmp_path / f".other.rgtp-tmp-{host}-{dead}-d4e5f6"
    running = tmp_path / f".pkg.rgtp-tmp-{host}-{live}-a1b2c3"
    other_host = tmp_path / f".pkg.rgtp-tmp-elsewhere-{dead}-a1b2c3"  # its pid means nothing here
    not_ours = tmp_path / ".pkg.tmp-123"
    for d in (stale, stale_other_name, running, other_host, not_ours):
        d.mkdir()
        (d / "stage0.weights").write_bytes(b"\0" * 1024)
    export_package(tiny_detector, _tiny_plan(tiny_detector), tmp_path / "pkg", progress=False)
    assert not stale.exists() and not stale_other_name.exists()
    assert running.exists() and other_host.exists() and not_ours.exists()


def test_a_package_set_aside_by_a_killed_export_is_put_back(tmp_path, small_packages) -> None:
    """Killed between setting the old package aside and moving the new one in: the next
    export in that directory restores the old package rather than deleting it."""
    aside = tmp_path / f".pkg.rgtp-old-{package_module._HOST}-{_dead_pid()}-a1b2c3"
    shutil.copytree(small_packages["b"][0], aside)
    before = tree(aside)
    assert remove_stale_work_dirs(tmp_path) == []
    assert not aside.exists() and tree(tmp_path / "pkg") == before
