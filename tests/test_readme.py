"""The runnable examples of the README and of docs/usage.md run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python_block(document: str, marker: str) -> str:
    """The one ```python block of `document` (relative to the repository) holding `marker`."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / document).read_text(), re.S)
    (example,) = [b for b in blocks if marker in b]
    return example


def test_the_readme_api_example_runs(capsys) -> None:
    example = python_block("README.md", "Pipeline.from_model")
    exec(compile(example, "README.md", "exec"), {})
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [int(k) for k, _ in rows] == [256] + [77] * 7 + [256] + [77] * 7  # reset every 8


def test_the_your_own_head_example_runs(capsys) -> None:
    example = python_block("docs/usage.md", "def my_head")
    exec(compile(example, "docs/usage.md", "exec"), {})
    k, detections, shape = capsys.readouterr().out.split(maxsplit=2)
    assert (int(k), int(detections)) == (256, 256)  # a reset frame; one box per token
    assert shape.strip() == "torch.Size([1, 192, 16, 16])"
