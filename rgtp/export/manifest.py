"""manifest.json: what an exported package holds, and the checks that it still does."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rgtp.models.plan import GraphSpec, StagePlan, TensorSpec

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


class ManifestError(ValueError):
    """A package and its manifest disagree, or the manifest is malformed."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class GraphRecord:
    """One ONNX graph: `kind` embed | stage | head; `k` an int, or "K" for the symbolic
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
    model_weights: str
    opset: int
    versions: dict[str, str]
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

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
        }

    def save(self, directory: Path) -> Path:
        path = directory / MANIFEST
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Manifest:
        directory = Path(directory)
        path = directory / MANIFEST
        if not path.is_file():
            raise ManifestError(f"{directory}: no {MANIFEST} (not an rgtp export)")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ManifestError(f"{path}: not valid JSON ({e})") from e
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ManifestError(
                f"{path}: schema version {version}, this rgtp reads {SCHEMA_VERSION}; re-export"
            )
        try:
            return cls(
                plan=StagePlan.from_dict(d["plan"]),
                graphs=[GraphRecord.from_dict(g) for g in d["graphs"]],
                files=d["files"],
                model_weights=d["model_weights"],
                opset=d["opset"],
                versions=d["versions"],
                extra=d.get("extra", {}),
            )
        except (KeyError, TypeError) as e:
            raise ManifestError(f"{path}: malformed manifest ({e!r})") from e


def record_files(directory: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    return {
        n: {"sha256": sha256_file(directory / n), "bytes": (directory / n).stat().st_size}
        for n in sorted(names)
    }


def verify_files(directory: Path, manifest: Manifest) -> list[str]:
    """Problems with the package's files: missing, resized or changed (by sha256)."""
    problems = []
    for name, rec in manifest.files.items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif path.stat().st_size != rec["bytes"]:
            problems.append(f"{name}: {path.stat().st_size} bytes, manifest says {rec['bytes']}")
        elif sha256_file(path) != rec["sha256"]:
            problems.append(f"{name}: sha256 differs from the manifest (file changed)")
    referenced = {g.file for g in manifest.graphs} | {
        g.weights for g in manifest.graphs if g.weights
    }
    referenced.add(manifest.model_weights)
    problems += [
        f"{n}: referenced but not listed in files" for n in sorted(referenced - set(manifest.files))
    ]
    return problems
