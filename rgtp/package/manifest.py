"""manifest.json: what an exported package holds, validated before anything trusts it.

A manifest is read in three steps, each refusing with a `ManifestError` that names the
problem: its schema version, its types and required fields (`manifest_schema.json`), and
the cross-references a schema cannot express (every graph's files listed, embed and head
present, every (stage, K bucket) served by a fixed-K graph or the stage's symbolic one,
every file name inside the package). Whether the files still hold what the manifest
records is `rgtp.package.verify`'s business.

The package's digest is the sha256 of manifest.json's bytes, "sha256:<hex>": the manifest
records every other file's sha256, so the digest covers the whole package. A user pins the
digest of the package they verified (`rgtp check` prints it) and a load given one refuses
any other manifest, before reading anything it says.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from rgtp.package.plan import GraphSpec, StagePlan, TensorSpec

if TYPE_CHECKING:
    import jsonschema

SCHEMA_VERSION = 2
MANIFEST = "manifest.json"
PARTIAL_MANIFEST = f".{MANIFEST}.partial"  # written, then renamed over MANIFEST
PUBLIC_MODES = (0o755, 0o644)  # a package's (directories, files): readable by every user
PRIVATE_MODES = (0o700, 0o600)
_SCHEMA_FILE = Path(__file__).with_name("manifest_schema.json")
DIGEST_PREFIX = "sha256:"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_MAX_SCHEMA_ERRORS = 5  # a list, not a page: the first few say what is wrong
_JSON_TYPES = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


class ManifestError(ValueError):
    """A package and its manifest disagree, or the manifest is malformed. `problems`: one
    line per problem (what `rgtp check` prints), the message: all of them."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]

    @classmethod
    def listing(cls, where: object, problems: list[str]) -> ManifestError:
        """One error for several problems of `where` (a file or package)."""
        return cls(f"{where}: " + "; ".join(problems), [f"{where}: {p}" for p in problems])


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def digest_of(manifest_bytes: bytes) -> str:
    """The package digest of a manifest.json's bytes: "sha256:<64 hex digits>"."""
    return DIGEST_PREFIX + hashlib.sha256(manifest_bytes).hexdigest()


def package_digest(directory: str | Path) -> str:
    """The digest of the package in `directory` (its manifest.json's sha256, see above)."""
    return digest_of((Path(directory) / MANIFEST).read_bytes())


def check_digest(where: object, found: str, expected: str) -> None:
    """Refuse (ManifestError naming both) a package whose digest is not the one pinned, or
    a pin that is not a digest."""
    if not isinstance(expected, str) or not _DIGEST.fullmatch(expected.lower()):
        raise ManifestError(
            f"{expected!r} is not a package digest; expected sha256:<64 hex digits>, as "
            "`rgtp export` and `rgtp check` print it"
        )
    if found != expected.lower():
        raise ManifestError(
            f"{where}: package digest {found}, expected {expected} (its manifest.json is "
            "not the one pinned: another or a changed package)"
        )


def package_file(directory: str | Path, name: str) -> Path:
    """The path of manifest file `name` inside package `directory`, resolved (symbolic links
    followed). The one place a manifest name meets the file system: a name that is empty,
    absolute, has a `..` part or resolves outside the package is refused."""
    if not isinstance(name, str) or not name:
        raise ManifestError(f"file name {name!r}: expected a non-empty relative path")
    pure = PurePosixPath(name)
    if pure.is_absolute():
        raise ManifestError(
            f"file name {name!r} is absolute; manifest names are relative to the package"
        )
    if ".." in pure.parts:
        raise ManifestError(f"file name {name!r} has a '..' part; it must stay in the package")
    try:
        root = Path(directory).resolve()
        path = (root / pure).resolve()
    except (OSError, RuntimeError, ValueError) as e:  # a symbolic-link loop, a NUL byte
        raise ManifestError(f"file name {name!r} cannot be resolved ({e})") from e
    if not path.is_relative_to(root):
        raise ManifestError(
            f"file name {name!r} resolves to {path}, outside the package {root} (a symbolic link?)"
        )
    return path


@dataclass
class GraphRecord:
    """One ONNX graph: `kind` embed | stage | head | extra (the family's further graphs,
    e.g. ViViT's temporal transformer); `k` an int, or "K" for the symbolic
    variant; `weights` the external-data file its initializers live in."""

    name: str
    kind: str
    file: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    stage: int | None = None
    blocks: list[int] | None = None
    k: int | str | None = None
    weights: str | None = None

    @property
    def spec(self) -> GraphSpec:
        return GraphSpec(self.name, tuple(self.inputs), tuple(self.outputs))

    @property
    def symbolic(self) -> bool:
        return isinstance(self.k, str)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if v is not None}
        d["inputs"] = [t.to_dict() for t in self.inputs]
        d["outputs"] = [t.to_dict() for t in self.outputs]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GraphRecord:
        d = dict(d)
        d["inputs"] = [TensorSpec.from_dict(t) for t in d["inputs"]]
        d["outputs"] = [TensorSpec.from_dict(t) for t in d["outputs"]]
        return cls(**d)


@dataclass
class Manifest:
    plan: StagePlan
    graphs: list[GraphRecord]
    files: dict[str, dict[str, Any]]
    # the model's weights for the torch backend and `rgtp check` (`model.safetensors`); None
    # for a package exported without them (`rgtp export --no-reference`), which the graphs'
    # own weight files run alone
    model_weights: str | None
    opset: int
    versions: dict[str, str]
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    # How the graphs' arithmetic was lowered after export (`export.quantize`): None for the
    # float32 graphs the exporter wrote; else the tool, method and settings, so that a
    # reader knows what its tolerances must allow for.
    quantization: dict[str, Any] | None = None
    # the package digest of the manifest.json this was last read from or written to (None
    # for one never on disk); not part of the manifest itself
    digest: str | None = field(default=None, compare=False)

    @property
    def precision(self) -> str:
        """The graphs' precision: "fp32" as exported, "int8" once quantized."""
        return "fp32" if self.quantization is None else str(self.quantization["precision"])

    def graph(self, name: str) -> GraphRecord:
        for g in self.graphs:
            if g.name == name:
                return g
        raise ManifestError(f"manifest has no graph {name!r}")

    def stage_graphs(self, stage: int, symbolic: bool = False) -> list[GraphRecord]:
        return [
            g
            for g in self.graphs
            if g.kind == "stage" and g.stage == stage and g.symbolic == symbolic
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "plan": self.plan.to_dict(),
            "opset": self.opset,
            "versions": self.versions,
            "model_weights": self.model_weights,
            "graphs": [g.to_dict() for g in self.graphs],
            "files": self.files,
            **({"extra": self.extra} if self.extra else {}),
            **({"quantization": self.quantization} if self.quantization else {}),
        }

    def save(self, directory: Path) -> Path:
        """Write manifest.json whole or not at all (a rebuild rewrites it in place)."""
        path = directory / MANIFEST
        partial = directory / PARTIAL_MANIFEST
        raw = (json.dumps(self.to_dict(), indent=1) + "\n").encode()
        partial.write_bytes(raw)
        if path.exists():  # keep who may read it
            partial.chmod(path.stat().st_mode & 0o777)
        os.replace(partial, path)
        self.digest = digest_of(raw)
        return path

    @classmethod
    def load(cls, directory: str | Path, digest: str | None = None) -> Manifest:
        """The manifest of the package in `directory`; with `digest`, only if its bytes
        have that digest (checked on the bytes parsed, before anything in them is read)."""
        directory = Path(directory)
        path = directory / MANIFEST
        if not path.is_file():
            raise ManifestError(f"{directory}: no {MANIFEST} (not an rgtp export)")
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise ManifestError(f"{path}: cannot read it ({e.strerror})") from e
        if digest is not None:
            check_digest(directory, digest_of(raw), digest)
        try:
            d = json.loads(raw.decode())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ManifestError(f"{path}: not valid JSON ({e})") from e
        problems = manifest_problems(d)
        if problems:
            raise ManifestError.listing(path, problems)
        try:
            manifest = cls(
                plan=StagePlan.from_dict(d["plan"]),
                graphs=[GraphRecord.from_dict(g) for g in d["graphs"]],
                files=d["files"],
                model_weights=d["model_weights"],
                opset=d["opset"],
                versions=d["versions"],
                extra=d.get("extra", {}),
                quantization=d.get("quantization"),
                digest=digest_of(raw),
            )
        except (KeyError, TypeError, ValueError) as e:  # the plan's own checks
            raise ManifestError(f"{path}: malformed plan ({e})") from e
        problems = _bucket_problems(manifest)
        for name in manifest.files:
            try:
                package_file(directory, name)
            except ManifestError as e:
                problems.append(str(e))
        if problems:
            raise ManifestError.listing(path, problems)
        return manifest


@cache
def _validator() -> jsonschema.Draft202012Validator:
    # imported here: in-memory pipelines (Pipeline.from_model) never read a manifest
    import jsonschema

    return jsonschema.Draft202012Validator(json.loads(_SCHEMA_FILE.read_text()))


def manifest_problems(d: object) -> list[str]:
    """What is wrong with a parsed manifest.json: schema version, then types and required
    fields, then references between its parts. Empty when it can be loaded."""
    if not isinstance(d, dict):
        return [f"expected a JSON object, found {_JSON_TYPES.get(type(d), type(d).__name__)}"]
    version = d.get("schema_version")
    if version != SCHEMA_VERSION:
        return [
            f"schema version {version}; this rgtp reads {SCHEMA_VERSION}: export the package "
            "again with this rgtp, or load it with the rgtp that wrote it"
        ]
    errors = sorted(_validator().iter_errors(d), key=lambda e: list(map(str, e.absolute_path)))
    problems = [
        f"{'/'.join(map(str, e.absolute_path)) or 'top level'}: {e.message}"
        for e in errors[:_MAX_SCHEMA_ERRORS]
    ]
    if len(errors) > _MAX_SCHEMA_ERRORS:
        problems.append(f"and {len(errors) - _MAX_SCHEMA_ERRORS} more schema errors")
    return problems or _reference_problems(d)


def _reference_problems(d: dict[str, Any]) -> list[str]:
    """Names used by graphs and plans that the manifest does not define."""
    files = set(d["files"])
    problems = []
    names = [g["name"] for g in d["graphs"]]
    problems += [
        f"graph {n!r} appears twice" for n in sorted({n for n in names if names.count(n) > 1})
    ]
    used = [("model_weights", d["model_weights"])] if d["model_weights"] is not None else []
    for g in d["graphs"]:
        used += [(f"graph {g['name']!r}", g["file"])]
        used += [(f"graph {g['name']!r} weights", g["weights"])] if "weights" in g else []
    for p in d.get("extra", {}).get("trt", {}).get("plans", []):
        used += [
            (f"TensorRT plan {p['name']!r}", p["file"]),
            (f"plan {p['name']!r} onnx", p["onnx"]),
        ]
    problems += [
        f"{what}: {name!r} is not listed in files" for what, name in used if name not in files
    ]
    headless = d["plan"].get("head") == "none"  # exported with --head none
    for kind, want in (("embed", 1), ("head", 0 if headless else 1)):
        count = sum(g["kind"] == kind for g in d["graphs"])
        if count != want:
            problems.append(f"expected {'one' if want else 'no'} {kind} graph, found {count}")
    return problems


def _bucket_problems(m: Manifest) -> list[str]:
    """Every (stage, K bucket) of the plan needs a fixed-K graph or the stage's symbolic one."""
    problems = []
    stages = len(m.plan.stages)
    for g in m.graphs:
        if g.kind == "stage" and not (g.stage is not None and g.stage < stages):
            problems.append(f"graph {g.name!r}: stage {g.stage}, the plan has {stages} stages")
    have = {g.name for g in m.graphs if g.kind == "extra"}
    problems += [
        f"expected the {name!r} graph of a {m.plan.family.name} model, found none"
        for name in m.plan.extra_specs()
        if name not in have
    ]
    for i in range(stages):
        if m.stage_graphs(i, symbolic=True):
            continue
        served = {g.k for g in m.stage_graphs(i)}
        problems += [
            f"stage {i} has no graph for K bucket {k} (no fixed-K graph, no symbolic-K graph)"
            for k in m.plan.buckets_of(i)
            if k not in served
        ]
    return problems


def record_files(directory: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    paths = {n: package_file(directory, n) for n in sorted(names)}
    return {n: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for n, p in paths.items()}
