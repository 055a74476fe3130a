"""`rgtp triton`: a Triton model repository serving an exported package.

    REPO/
      rgtp-triton.json            what rgtp wrote here (so a rewrite deletes nothing else)
      rgtp_<model>/
        config.pbtxt              generated (`rgtp.serving.model_config`), validated
        1/
          model.py                the Python-backend model (`rgtp/serving/backend_model.py`)
          package/                the package's files, verified again at every load

The repository is written whole into a temporary directory beside REPO and renamed into
place, so REPO never holds half a repository. REPO must be new, empty, or (with `force`) a
repository an earlier `rgtp triton` wrote and holding nothing else.
"""

from __future__ import annotations

import json
import shutil
import site
import sys
import tempfile
from pathlib import Path

import rgtp
from rgtp.export.package import move_into_place, set_modes
from rgtp.models.manifest import MANIFEST, Manifest, package_file
from rgtp.models.package_verify import verify_package
from rgtp.serving.model_config import config_text, model_config
from rgtp.serving.settings import ServingSettings

MARKER = "rgtp-triton.json"
VERSION = "1"
PACKAGE_DIR = "package"
TEMPLATE = Path(__file__).with_name("backend_model.py")


class RepositoryError(ValueError):
    """A repository that cannot be written where or from what was asked."""


def model_name(manifest: Manifest) -> str:
    """The served model's name: rgtp_<model>, e.g. rgtp_vitdet-small."""
    return f"rgtp_{manifest.plan.config.name}"


def stub_sys_path() -> list[str]:
    """What the model puts on the backend stub's sys.path: this rgtp's source tree and the
    running interpreter's site-packages, so the stub imports the same code and libraries."""
    return [str(Path(rgtp.__file__).resolve().parent.parent), *site.getsitepackages()]


def stub_environment() -> str | None:
    """The running Python environment, if it is one the Python backend can activate."""
    prefix = Path(sys.prefix)
    return str(prefix) if (prefix / "bin" / "activate").is_file() else None


def write_repository(
    package: str | Path, out: str | Path, settings: ServingSettings, force: bool = False
) -> Path:
    """Write the repository serving `package` with `settings` to `out` (see the module
    docstring); returns the model's directory. The package is verified first, and its copy
    again before the repository is put in place."""
    package, out = Path(package), _destination(out, force)
    manifest = Manifest.load(package)
    if manifest.plan.family.name != "detection":
        raise RepositoryError(
            f"{package} holds a {manifest.plan.family.name} model; rgtp serves detectors "
            "(boxes, scores, labels per frame) from Triton"
        )
    if settings.backend == "trt" and not manifest.extra.get("trt"):
        raise RepositoryError(
            f"{package} has no TensorRT plans; build them first (rgtp build {package} "
            "--backend trt) or serve another backend (--backend ort)"
        )
    verify_package(package, manifest)
    name = model_name(manifest)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.rgtp-tmp-", dir=out.parent))
    try:
        version = tmp / name / VERSION
        copy = version / PACKAGE_DIR
        for file in [MANIFEST, *manifest.files]:
            target = package_file(copy, file)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(package_file(package, file), target)
        verify_package(copy, manifest)
        shutil.copyfile(TEMPLATE, version / "model.py")
        cfg = model_config(name, settings, stub_sys_path(), stub_environment())
        (tmp / name / "config.pbtxt").write_text(config_text(cfg))
        written = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        (tmp / MARKER).write_text(json.dumps({"model": name, "files": written}, indent=1))
        set_modes(tmp)
        move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / name


def _destination(out: str | Path, force: bool) -> Path:
    if not str(out).strip():
        raise RepositoryError("the repository directory is empty (''); name one")
    path = Path(out)
    if path.resolve() in (Path.cwd().resolve(), *Path.cwd().resolve().parents):
        raise RepositoryError(
            f"refusing to write a repository into '{out}': it is the working directory or "
            "one of its parents; name a new or empty directory"
        )
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise RepositoryError(f"'{out}' is not a directory; name a new or empty one")
    if not path.exists() or not any(path.iterdir()):
        return path
    foreign = _foreign_files(path)
    if foreign is None:
        raise RepositoryError(
            f"'{out}' is not empty and is not a repository rgtp wrote (no {MARKER}); rgtp "
            "deletes nothing it did not write: name a new or empty directory"
        )
    if foreign:
        raise RepositoryError(
            f"'{out}' holds a repository rgtp wrote and files it did not "
            f"({', '.join(foreign[:5])}); move them out first"
        )
    if not force:
        raise RepositoryError(f"'{out}' holds a repository rgtp wrote; pass --force to replace it")
    return path


def _foreign_files(repo: Path) -> list[str] | None:
    """Files under `repo` its marker does not list; None without a readable marker."""
    try:
        own = set(json.loads((repo / MARKER).read_text())["files"]) | {MARKER}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # (the backend stub's Python caches the compiled model.py beside it)
    files = (
        p
        for p in repo.rglob("*")
        if (not p.is_dir() or p.is_symlink()) and "__pycache__" not in p.parts
    )
    return sorted(rel for p in files if (rel := p.relative_to(repo).as_posix()) not in own)
