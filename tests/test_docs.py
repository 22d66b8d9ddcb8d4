"""The documentation: the API reference covers the public API (the checks `mkdocs build
--strict` runs through scripts/docs_hooks.py, here without MkDocs), every page is in the
site's nav, and the getting-started page's snippets run as they are."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import headrace

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _hooks() -> Any:
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "scripts/docs_hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = _hooks()


def test_every_public_name_has_a_docstring_and_is_rendered_once() -> None:
    assert hooks.check(DOCS) == []


def _fake_package() -> types.ModuleType:
    module = types.ModuleType("fake")

    def documented() -> None:
        """Has one."""

    def bare() -> None:
        pass

    class Thing:
        """A documented class."""

        def method(self) -> None:
            pass

        @property
        def size(self) -> int:
            """Documented."""
            return 1

        def _private(self) -> None:
            pass

    class Bare:
        pass

    module.documented = documented  # type: ignore[attr-defined]
    module.bare = bare  # type: ignore[attr-defined]
    module.Thing = Thing  # type: ignore[attr-defined]
    module.Bare = Bare  # type: ignore[attr-defined]
    module.__all__ = ["documented", "bare", "Thing", "Bare"]  # type: ignore[attr-defined]
    return module


def test_the_check_finds_names_and_members_without_a_docstring() -> None:
    assert hooks.undocumented(_fake_package()) == ["fake.bare", "fake.Thing.method", "fake.Bare"]


def test_the_check_finds_names_no_page_renders_or_several_do() -> None:
    pages = {"a.md": "::: fake.documented\n\n::: fake.Thing\n", "b.md": "::: fake.Thing\n"}
    problems = hooks.coverage(_fake_package(), pages)
    assert any("fake.bare is public but no page renders it" in p for p in problems)
    assert any("fake.Thing is rendered on several pages (a.md, b.md)" in p for p in problems)
    assert not any("fake.documented" in p for p in problems)


def test_every_page_is_in_the_nav() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\s+- (?:[^:\n]+: )?([\w/-]+\.md)\s*$", config, re.MULTILINE))
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert pages - listed == set(), "pages missing from the nav of mkdocs.yml"
    assert listed - pages == set(), "nav entries without a page"


def test_user_docs_never_point_to_the_design_documents() -> None:
    texts = [p.read_text(encoding="utf-8") for p in DOCS.rglob("*.md")]
    texts += [(ROOT / name).read_text(encoding="utf-8") for name in ("README.md", "KNOWN_GAPS.md")]
    for name in headrace.__all__:  # the docstrings the site renders
        obj = getattr(headrace, name)
        texts += [obj.__doc__ or ""]
        texts += (
            [getattr(m, "__doc__", None) or "" for m in vars(obj).values()]
            if isinstance(obj, type)
            else []
        )
    for text in texts:
        assert "DESIGN.md" not in text and "RELIABILITY.md" not in text


def _snippets(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(encoding="utf-8"), re.S | re.M)


@pytest.mark.parametrize("index", range(len(_snippets(DOCS / "getting-started.md"))))
def test_getting_started_snippets_run(index: int, tmp_path: Path) -> None:
    code = _snippets(DOCS / "getting-started.md")[index]
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, f"{code}\n{done.stderr}"


def test_the_package_is_the_one_documented() -> None:
    assert headrace.__name__ == hooks.PACKAGE
