"""Collection rules for the whole repository: the doctests under ``src/`` and ``tests/``.

``--doctest-modules`` imports every module under ``src/headrace``. A module that imports an
optional dependency (ray, torch, pyzmq, graphviz, rich) at its top level cannot be imported
where that extra is not installed, so its doctests are skipped there instead of failing
collection. ``conftest.py`` files are never collected as doctest modules: pytest would import
``tests/conftest.py`` and ``tests/backends/conftest.py`` under the same name ``conftest`` and
fail with "import file mismatch". The leak checks live in ``tests/conftest.py``.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent / "src" / "headrace"

#: Top-level import names of the optional dependencies (the extras in pyproject.toml).
OPTIONAL = frozenset({"ray", "torch", "zmq", "graphviz", "rich"})


def _top_level_imports(path: Path) -> set[str]:
    """First components of the modules imported unconditionally at the top of ``path``."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError, ValueError):
        return set()  # let pytest report the real problem when it imports the file
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Skip conftest files, and modules whose optional dependency is missing."""
    if collection_path.name == "conftest.py":
        return True  # loaded by pytest as plugins all the same; they hold no doctests
    path = collection_path.resolve()
    if path.suffix != ".py" or not path.is_relative_to(SRC):
        return None
    missing = sorted(n for n in _top_level_imports(path) & OPTIONAL if not _installed(n))
    return True if missing else None
