"""Every how-to guide's python blocks run, top to bottom, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

GUIDES = sorted((Path(__file__).resolve().parents[1] / "guides").glob("*.md"))
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def test_there_are_guides():
    names = {p.name for p in GUIDES}
    assert {"quickstart.md", "define-your-own-model.md"} <= names


@pytest.mark.parametrize("guide", GUIDES, ids=[p.stem for p in GUIDES])
def test_guide_runs(guide: Path, tmp_path, monkeypatch):
    blocks = BLOCK.findall(guide.read_text())
    assert blocks, f"{guide.name} has no python blocks"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"guide_{guide.stem}"}
    for i, code in enumerate(blocks, 1):
        try:
            exec(compile(code, f"{guide.name}[block {i}]", "exec"), namespace)
        except Exception as e:  # name the block that broke
            raise AssertionError(f"{guide.name}, block {i} failed: {type(e).__name__}: {e}") from e
