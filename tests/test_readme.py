"""The README's runnable examples run."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_your_own_head_example_runs(capsys) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (example,) = [b for b in blocks if "def my_head" in b]
    exec(compile(example, "README.md", "exec"), {})
    k, detections, shape = capsys.readouterr().out.split(maxsplit=2)
    assert (int(k), int(detections)) == (256, 256)  # a reset frame; one box per token
    assert shape.strip() == "torch.Size([1, 192, 16, 16])"
