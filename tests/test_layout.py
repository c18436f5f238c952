"""The package keeps its shape: every module small, or saying in its docstring why it is not."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from support import ROOT

PACKAGE = ROOT / "daemon" / "kommo_callerid"
MAX_LINES = 320
MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_is_small_or_says_why(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    lines = source.count("\n")
    if lines <= MAX_LINES:
        return
    docstring = ast.get_docstring(ast.parse(source)) or ""
    assert "Size:" in docstring, f"{lines} lines and no 'Size:' reason in the docstring"
