"""Data flows one way: models -> export / engines -> runtime -> the CLI. No module imports
from a layer above its own, not even inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import rgtp

ROOT = Path(rgtp.__file__).parent
# what each layer may import from rgtp, besides itself
ALLOWED = {
    "core": set(),
    "models": {"core", "package"},
    "package": {"core", "models", "families"},
    "engines": {"core", "models", "package"},
    "runtime": {"core", "models", "package", "families", "engines"},
}


def rgtp_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every rgtp import in the file, top level or not."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rgtp."):
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("rgtp.")]
    return out


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_no_layer_imports_from_above(layer: str) -> None:
    bad = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        for line, module in rgtp_imports(path):
            other = module.split(".")[1]
            if other != layer and other not in ALLOWED[layer]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, "\n".join(bad)


def test_the_stream_does_not_know_the_pipeline() -> None:
    """A stream runs on an EngineSet; the pipeline builds streams, not the reverse."""
    modules = [m for _, m in rgtp_imports(ROOT / "runtime" / "stream.py")]
    assert "rgtp.runtime.pipeline" not in modules
