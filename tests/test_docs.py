"""The worked examples of docs/ARCHITECTURE.md run as written (each block in a fresh namespace)."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "ARCHITECTURE.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_architecture_document_has_its_worked_examples() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_a_worked_example_runs(block: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # a module of its own, as a user's file would be (dataclasses look their module up), compiled
    # without this file's __future__ flags
    module = types.ModuleType("docs_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(block, str(DOC), "exec", dont_inherit=True), module.__dict__)
