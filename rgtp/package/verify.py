"""Do a package's files still hold what its manifest records? Checked before anything
loads them: every file present, a regular file inside the package, of the recorded size
and sha256. Each file is hashed once per check."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import onnx

from rgtp.package.manifest import GraphRecord, Manifest, ManifestError, package_file, sha256_file

log = logging.getLogger(__name__)


def file_problems(
    directory: Path, manifest: Manifest, hash_files: bool = True, skip: Iterable[str] = ()
) -> tuple[list[str], dict[str, str]]:
    """(problems, sha256 of every file hashed) for the manifest's files but `skip`; one
    problem line per file, naming it. Without `hash_files`, only presence and size."""
    problems: list[str] = []
    hashes: dict[str, str] = {}
    skipped = set(skip)
    for name, rec in manifest.files.items():
        if name in skipped:
            continue
        try:
            path = package_file(directory, name)
            if not path.exists():
                problems.append(f"{name}: missing")
                continue
            if not path.is_file():
                problems.append(f"{name}: not a regular file")
                continue
            size = path.stat().st_size
            if size != rec["bytes"]:
                problems.append(f"{name}: {size} bytes, manifest says {rec['bytes']}")
                continue
            if hash_files:
                hashes[name] = sha256_file(path)
                if hashes[name] != rec["sha256"]:
                    problems.append(f"{name}: sha256 differs from the manifest (file changed)")
        except ManifestError as e:
            problems.append(str(e))
        except OSError as e:
            problems.append(f"{name}: cannot read it ({e.strerror or e})")
    return problems, hashes


def verify_package(
    directory: Path, manifest: Manifest, verify: bool = True, skip: Iterable[str] = ()
) -> dict[str, str]:
    """Refuse (ManifestError naming every bad file) a package whose files are missing,
    resized or changed; returns the sha256 of every file it hashed.

    `verify=False` is for packages verified elsewhere (e.g. a read-only store checked at
    deployment): presence and sizes are still checked, hashes are not, and a warning says so.
    """
    skip = set(skip)
    problems, hashes = file_problems(directory, manifest, hash_files=verify, skip=skip)
    if problems:
        raise ManifestError.listing(f"{directory}: package fails verification", problems)
    if not verify:
        unverified = sorted(set(manifest.files) - skip)
        log.warning(
            "%s: sha256 verification of %d files skipped (verify=False): %s",
            directory,
            len(unverified),
            ", ".join(unverified),
        )
    return hashes


def load_verified(directory: Path, verify: bool = True, digest: str | None = None) -> Manifest:
    """The package's manifest, once every file it lists has been verified (see
    `verify_package`); what every backend's load starts with. `digest`: the package digest
    pinned ("sha256:<hex>", `Manifest.load`); any other manifest is refused, whatever
    `verify` says."""
    manifest = Manifest.load(directory, digest)
    verify_package(directory, manifest, verify)
    return manifest


def external_data_problems(model: onnx.ModelProto, rec: GraphRecord) -> list[str]:
    """An ONNX graph names its external-data file itself; it must be the one the manifest
    lists for it (and so verified and inside the package), not any other path."""
    locations = {
        e.value
        for init in model.graph.initializer
        if init.data_location == onnx.TensorProto.EXTERNAL
        for e in init.external_data
        if e.key == "location"
    }
    return [
        f"{rec.file}: its weights are read from {loc!r}, the manifest lists {rec.weights!r}"
        for loc in sorted(locations - {rec.weights})
    ]
