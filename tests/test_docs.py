"""Every ```python block of docs/*.md and README.md runs (the blocks of one page share a namespace,
in order), so the documentation cannot drift from the code."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def test_there_are_code_blocks():
    assert sum(len(BLOCK.findall(p.read_text(encoding="utf-8"))) for p in PAGES) >= 5


@pytest.mark.parametrize("page", [p for p in PAGES if BLOCK.search(p.read_text(encoding="utf-8"))],
                         ids=lambda p: p.name)
def test_page_code_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything a block writes lands in a temporary folder
    monkeypatch.setenv("MPLBACKEND", "Agg")
    ns: dict = {"__name__": "__doc__"}
    for i, block in enumerate(BLOCK.findall(page.read_text(encoding="utf-8"))):
        code = compile(block, f"{page.name}[block {i}]", "exec")
        exec(code, ns)  # noqa: S102 - executing our own documentation is the point
    assert os.getcwd() == str(tmp_path)
