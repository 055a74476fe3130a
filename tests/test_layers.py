"""Data flows one way. Every module of rgtp belongs to a layer (its folder, or for a module at
the top, its name), and imports only from its own layer and those below, read from the
imports themselves (module level and inside functions alike); and no modules import each
other in a circle, so no import needs to hide inside a function to break one. Imports under
`if TYPE_CHECKING:` never run and are left out."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import rgtp

ROOT = Path(rgtp.__file__).parent
# Lowest first. A family sits above the package format (which asks it for its graphs by name,
# `rgtp.package.family`) and below everything that runs a package. A family's tools (its
# `tools/` folder: training, evaluation, its FLOPs report, the demo) drive the runtime, so
# they sit above it and above what the families' tools share (`eval`, `train`); the registry
# loads them by name when a command asks (`rgtp.package.family.tool`).
ORDER = (
    "_optional",  # optional dependencies, named by the extra that installs them
    "core",  # the method's arithmetic
    "data",  # synthetic videos, loaders
    "package",  # plan, manifest, verification, the Family interface and registry
    "models",  # what every family's network is built from
    "families",  # detection, classification
    "engines",
    "export",  # `rgtp check` runs the torch engine against ONNX Runtime
    "runtime",
    "serving",
    "viz",
    "eval",
    "train",
    "tools",  # rgtp/families/<name>/tools/
    "cli",
    "__main__",
)
# Shared layers name no concrete family: the CLI, like the rest, asks the Family (`tool`,
# `weight_formats`, `flops_conventions`) through the registry.
SHARED = (
    "core",
    "package",
    "models",
    "engines",
    "export",
    "runtime",
    "serving",
    "viz",  # a step's picture: its family's result says what it shows (`marks`)
    "eval",
    "train",
    "cli",
)


def modules() -> dict[str, Path]:
    """Every module of rgtp by dotted name."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[-1] == "__main__":  # `python -m rgtp.serving` runs the CLI
        return "__main__"
    if parts[1:2] == ["families"] and parts[3:4] == ["tools"]:
        return "tools"
    return parts[1] if len(parts) > 1 else "rgtp"


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def rgtp_imports(path: Path, known: dict[str, Path]) -> list[tuple[int, str]]:
    """(line, module) of every rgtp module the file imports, at module level or inside a
    function; `from a import b` names module a.b where that is a module."""
    out: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if _type_checking(node):
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rgtp"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.append((node.lineno, sub if sub in known else node.module))
        elif isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names if a.name.startswith("rgtp"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return out


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {
        name: {m for _, m in rgtp_imports(path, known) if m in known and m != name}
        for name, path in known.items()
    }


def test_every_module_has_a_layer() -> None:
    missing = sorted({layer_of(m) for m in modules()} - set(ORDER) - {"rgtp"})
    assert not missing, f"add these folders or modules of rgtp/ to ORDER: {missing}"


@pytest.mark.parametrize("layer", ORDER)
def test_no_layer_imports_from_above(layer: str) -> None:
    known = modules()
    rank = {name: i for i, name in enumerate(ORDER)}
    bad = []
    for name, path in known.items():
        if layer_of(name) != layer:
            continue
        for line, module in rgtp_imports(path, known):
            other = layer_of(module)
            if other != "rgtp" and rank[other] > rank[layer]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module} ({other})")
    assert not bad, "\n".join(bad)


def test_no_modules_import_each_other_in_a_circle() -> None:
    """Tarjan's strongly connected components over the import graph: each must be one
    module."""
    graph = import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    assert not circles, circles


def concrete_families() -> set[str]:
    """The folders of rgtp/families/: one family each (`rgtp.families.loading` is not one)."""
    return {p.name for p in (ROOT / "families").iterdir() if (p / "__init__.py").exists()}


def test_shared_layers_name_no_family() -> None:
    """The shared layers, the CLI among them, import nothing from a concrete family
    (`rgtp.families.<name>`): they reach a family through its interface and the registry
    (`rgtp.package.family`, re-exported by `rgtp.families`) only."""
    known, concrete = modules(), concrete_families()
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for name, path in known.items()
        if layer_of(name) in SHARED
        for line, module in rgtp_imports(path, known)
        if module.split(".")[:3] in (["rgtp", "families", f] for f in concrete)
    ]
    assert not bad, "\n".join(bad)


def test_the_cli_names_no_family() -> None:
    """Nothing in rgtp/cli/ names a family's modules or a family by name: it asks the
    model's family for its tools (`tool`)."""
    concrete = concrete_families()
    bad = [
        f"{path.relative_to(ROOT)}: {word}"
        for path in sorted((ROOT / "cli").glob("*.py"))
        for word in (*(f"rgtp.families.{f}" for f in concrete), *(f'"{f}"' for f in concrete))
        if word in path.read_text()
    ]
    assert not bad, "\n".join(bad)


def test_a_family_imports_no_other_family() -> None:
    """Families are plug-ins: what two share lives below them (`rgtp.models`)."""
    known = modules()
    bad = []
    for name, path in known.items():
        parts = name.split(".")
        if len(parts) < 4 or parts[1] != "families":
            continue
        for line, module in rgtp_imports(path, known):
            other = module.split(".")
            if other[:2] == ["rgtp", "families"] and len(other) > 2 and other[2] != parts[2]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, "\n".join(bad)


def test_the_stream_does_not_know_the_pipeline() -> None:
    """A stream runs on an EngineSet; the pipeline builds streams, not the reverse."""
    known = modules()
    imported = [m for _, m in rgtp_imports(ROOT / "runtime" / "stream.py", known)]
    assert "rgtp.runtime.pipeline" not in imported
