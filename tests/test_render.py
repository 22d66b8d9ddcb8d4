"""Drawing a graph into a file: `Report.render` and `hr.render`, with what is missing explained."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

import headrace as hr


def stream() -> hr.Stream:
    return hr.from_iterable(range(4)).map(abs, name="absolute").batch(2)


def test_a_dot_path_gets_the_dot_text_without_graphviz(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "graphviz", None)
    built = stream()
    path = hr.render(built, tmp_path / "graph.dot")
    assert path.read_text() == built.to_dot()
    report = stream().run()
    annotated = report.render(tmp_path / "run.gv")
    assert annotated.read_text() == report.to_dot()


def test_without_the_graphviz_package_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "graphviz", None)
    with pytest.raises(ImportError, match=r'pip install "headrace\[graphviz\]"'):
        hr.render(stream(), tmp_path / "graph.svg")
    assert not (tmp_path / "graph.svg").exists()


def test_without_the_dot_program_the_error_explains_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("graphviz")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    report = stream().run()
    with pytest.raises(RuntimeError) as info:
        report.render(tmp_path / "run.svg")
    text = str(info.value)
    assert "'dot' program" in text and "apt install graphviz" in text
    assert not (tmp_path / "run.svg").exists()


def test_a_path_without_a_suffix_or_an_unknown_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="suffix"):
        hr.render(stream(), tmp_path / "graph")
    pytest.importorskip("graphviz")
    with pytest.raises(ValueError, match="cannot draw format 'docx'"):
        hr.render(stream(), tmp_path / "graph.docx")


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot program is not installed")
def test_an_svg_is_drawn_with_the_figures_of_the_run(tmp_path: Path) -> None:
    pytest.importorskip("graphviz")
    report = stream().run()
    svg = report.render(tmp_path / "run.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "absolute" in svg
    streams = hr.render([stream()], tmp_path / "graph.png")
    assert streams.read_bytes().startswith(b"\x89PNG")
