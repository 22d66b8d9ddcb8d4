"""MkDocs hooks (mkdocs.yml `hooks:`): the API reference must cover the whole public API.

`mkdocs build --strict` fails on any warning. mkdocstrings warns about broken references, but
says nothing about a public name without a docstring, or one that no page renders; these hooks
warn about both:

- every name in ``headrace.__all__`` has a docstring, and so has every public method and
  property its classes define;
- every name in ``headrace.__all__`` is rendered by exactly one ``::: headrace.NAME`` line on
  some page of docs/ (the page of its domain).

`tests/test_docs.py` runs the same checks without MkDocs.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

log = logging.getLogger("mkdocs.plugins.headrace")

PACKAGE = "headrace"
#: A line of a page that renders the API of one public name of a package (``{package}``).
DIRECTIVE = r"^:::\s+{package}\.(\w+)\s*$"


def _own_doc(obj: Any) -> str | None:
    """The docstring written for ``obj`` itself (not one a dataclass made up, not inherited)."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    if not isinstance(doc, str) or not doc.strip():
        return None
    if inspect.isclass(obj) and doc.startswith(f"{obj.__name__}("):  # dataclass's own text
        return None
    return doc


def _members(cls: type) -> Iterable[tuple[str, Any]]:
    """Public methods and properties that ``cls`` itself defines."""
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, staticmethod | classmethod):
            value = value.__func__
        if inspect.isfunction(value) or isinstance(value, property):
            yield name, value


def undocumented(module: ModuleType) -> list[str]:
    """Public names of ``module`` (its ``__all__``), and their members, without a docstring."""
    missing = []
    for name in module.__all__:
        obj = getattr(module, name)
        if _own_doc(obj) is None:
            missing.append(f"{module.__name__}.{name}")
        if inspect.isclass(obj):
            for member, value in _members(obj):
                if _own_doc(value) is None:
                    missing.append(f"{module.__name__}.{name}.{member}")
    return missing


def rendered(package: str, pages: dict[str, str]) -> dict[str, list[str]]:
    """Public name -> the pages that render it, from the pages' Markdown text."""
    directive = re.compile(DIRECTIVE.format(package=re.escape(package)), re.MULTILINE)
    found: dict[str, list[str]] = {}
    for page, text in pages.items():
        for name in directive.findall(text):
            found.setdefault(name, []).append(page)
    return found


def coverage(module: ModuleType, pages: dict[str, str]) -> list[str]:
    """What is wrong with the reference: names no page renders, or several pages render."""
    where = rendered(module.__name__, pages)
    problems = []
    for name in module.__all__:
        if name not in where:
            problems.append(
                f"{module.__name__}.{name} is public but no page renders it: add a line "
                f"'::: {module.__name__}.{name}' to the page of its domain under docs/"
            )
        elif len(where[name]) > 1:
            problems.append(
                f"{module.__name__}.{name} is rendered on several pages ({', '.join(where[name])})"
                "; keep one"
            )
    for name in sorted(set(where) - set(module.__all__)):
        problems.append(f"'::: {module.__name__}.{name}' renders a name not in __all__")
    return problems


def check(docs: Path) -> list[str]:
    """Every problem of the reference under ``docs``, one line each."""
    module = importlib.import_module(PACKAGE)
    pages = {
        str(path.relative_to(docs)): path.read_text(encoding="utf-8")
        for path in sorted(docs.rglob("*.md"))
    }
    problems = [f"{name} has no docstring" for name in undocumented(module)]
    return problems + coverage(module, pages)


# --- the MkDocs hook -----------------------------------------------------------------------


def on_pre_build(config: Any, **kwargs: Any) -> None:
    for problem in check(Path(config["docs_dir"])):
        log.warning("API reference: %s", problem)
