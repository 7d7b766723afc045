"""The floors of imports (STYLE.md): imports point down only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pyrovae"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return {n for n in names if n.startswith("pyrovae")}


def _files(sub: str) -> list[Path]:
    return sorted(p for p in (PACKAGE / sub).glob("*.py"))


def test_trainer_never_imports_models():
    assert not {m for m in _imports(PACKAGE / "train.py") if m.startswith("pyrovae.models")}


@pytest.mark.parametrize("path", _files("models"), ids=lambda p: p.stem)
def test_variants_import_only_the_base_and_building_blocks(path):
    if path.stem == "__init__":
        return
    for module in _imports(path):
        assert module != "pyrovae.models", f"{path.name} imports its own package's __init__"
        if module.startswith("pyrovae.models."):
            assert module == "pyrovae.models.vae", f"{path.name} imports another variant: {module}"
        assert module != "pyrovae" and not module.startswith(("pyrovae.train", "pyrovae.cli", "pyrovae.experiment"))


def test_building_blocks_import_no_models():
    for name in ("nets.py", "likelihoods.py", "schedules.py", "handlers.py", "checkpoint.py", "programs.py"):
        assert not _imports(PACKAGE / name) - {"pyrovae.handlers"}, name


def test_evaluation_does_not_import_the_trainer():
    # log_likelihood and compare_estimators share the pair and data checks with fit through
    # pyrovae.programs, never through fit's private helpers
    for path in (PACKAGE / "metrics" / "likelihood.py", PACKAGE / "compare.py"):
        assert "pyrovae.train" not in _imports(path), path.name


def test_cli_uses_the_public_api_only():
    for module in _imports(PACKAGE / "cli.py"):
        assert not module.split(".")[-1].startswith("_"), module
