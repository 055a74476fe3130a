"""`rgtp triton`: a Triton model repository serving an exported package (either family).

    REPO/
      rgtp-triton.json            what rgtp wrote here, with each file's sha256
      rgtp_<model>/
        config.pbtxt              generated (`rgtp.serving.model_config`), validated
        1/
          model.py                the Python-backend model (`rgtp/serving/backend_model.py`)
          package/                the package's files, verified again at every load,
                                  pinned by its digest (config.pbtxt's rgtp_package_digest)

Nothing in it names a path of the machine that wrote it (the Python environment that runs
the backend stub provides rgtp), so it may be copied to the serving machine. The settings
are checked against the package's plan before anything is written.

The repository is written whole into a temporary directory beside REPO and renamed into
place, so REPO never holds half a repository. REPO must be new, empty, or (with `force`) a
repository an earlier `rgtp triton` wrote and holding nothing else: every file in it listed
by its marker with the sha256 it has now (the stub's compiled `__pycache__` aside), so no
marker, however written, makes `force` delete a file rgtp did not write.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from rgtp.export.package import move_into_place, set_modes
from rgtp.package.manifest import MANIFEST, Manifest, package_file, sha256_file
from rgtp.package.verify import verify_package
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


def write_repository(
    package: str | Path,
    out: str | Path,
    settings: ServingSettings,
    force: bool = False,
    digest: str | None = None,
) -> Path:
    """Write the repository serving `package` with `settings` to `out` (see the module
    docstring); returns the model's directory. The package is verified first (`digest`:
    the package digest pinned, any other refused), and its copy again before the
    repository is put in place; the model serves the package of that digest only."""
    package, out = Path(package), _destination(out, force)
    manifest = Manifest.load(package, digest)
    if settings.backend == "trt" and not manifest.extra.get("trt"):
        raise RepositoryError(
            f"{package} has no TensorRT plans; build them first (rgtp build {package} "
            "--backend trt) or serve another backend (--backend ort)"
        )
    settings.check_against(manifest.plan)
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
        # the copy is the package verified above: same manifest bytes, same files
        verify_package(copy, Manifest.load(copy, manifest.digest))
        shutil.copyfile(TEMPLATE, version / "model.py")
        cfg = model_config(name, settings, manifest.plan.family.name, manifest.digest)
        (tmp / name / "config.pbtxt").write_text(config_text(cfg))
        written = {
            p.relative_to(tmp).as_posix(): sha256_file(p)
            for p in sorted(tmp.rglob("*"))
            if p.is_file()
        }
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
            f"'{out}' is not empty and is not a repository rgtp wrote (no readable {MARKER} "
            "listing each file's sha256); rgtp deletes nothing it did not write: name a new "
            "or empty directory"
        )
    if foreign:
        raise RepositoryError(
            f"'{out}' holds a repository rgtp wrote and files it did not write, or that "
            f"changed since ({', '.join(foreign[:5])}); move them out first"
        )
    if not force:
        raise RepositoryError(f"'{out}' holds a repository rgtp wrote; pass --force to replace it")
    return path


def _foreign_files(repo: Path) -> list[str] | None:
    """Files under `repo` that its marker does not list with the sha256 they have now (and
    any link, which rgtp never writes); None without a readable marker."""
    try:
        listed = json.loads((repo / MARKER).read_text())["files"]
        own = {str(name): str(digest) for name, digest in listed.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    foreign = []
    for p in sorted(repo.rglob("*")):
        rel = p.relative_to(repo).as_posix()
        if (p.is_dir() and not p.is_symlink()) or rel == MARKER:
            continue
        # (the backend stub's Python caches the compiled model.py beside it)
        if p.parent.name == "__pycache__" and p.suffix == ".pyc" and not p.is_symlink():
            continue
        if p.is_symlink() or not p.is_file() or own.get(rel) != sha256_file(p):
            foreign.append(rel)
    return foreign
