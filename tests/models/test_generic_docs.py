"""The Python example of docs/models.md's "Distil your own transformers model" runs as written."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).parents[2] / "docs" / "models.md"


def _example() -> str:
    section = DOC.read_text().split("## Distil your own transformers model", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the section shows one Python example"
    return blocks[0]


def test_the_generic_adapter_example_runs():
    scope: dict = {}
    exec(compile(_example(), str(DOC), "exec"), scope)  # our own documentation
    task, loss = scope["task"], scope["loss"]
    assert task.student.num_heads("decoder.self") == 2 and task.student.num_kv_heads("decoder.self") == 1
    assert task.student.num_layers("decoder.self") == 1
    assert loss.isfinite() and loss.requires_grad
