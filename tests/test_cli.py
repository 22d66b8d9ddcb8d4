"""The ``headrace`` command line, run as a user runs it: in a fresh interpreter."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

#: Under pytest's 60 s timeout, so a hung demo fails here with its output; the demo itself
#: takes a few seconds.
DEMO_TIMEOUT_S = 45


def _headrace(
    *args: str, tmpdir: Path | None = None, pre: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run the command line with ``args`` in a fresh interpreter, after the Python code ``pre``."""
    env = dict(os.environ)
    if tmpdir is not None:
        tmpdir.mkdir(exist_ok=True)
        env["TMPDIR"] = str(tmpdir)
    code = f"{pre}\nimport sys\nfrom headrace._cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        env=env,
        check=False,
    )


def _assert_demo_ran(done: subprocess.CompletedProcess[str], out: Path, tmpdir: Path) -> None:
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    for stage in ("load", "decode", "batch"):
        assert stage in done.stdout, f"stage {stage!r} missing from the report:\n{done.stdout}"
    assert "headrace demo: OK" in done.stdout
    dot = out / "headrace-demo.dot"
    assert dot.is_file(), done.stdout
    assert dot.read_text(encoding="utf-8").lstrip().startswith("digraph")
    assert str(dot) in done.stdout
    left = sorted(p.name for p in tmpdir.glob("headrace-*"))
    assert not left, f"the demo left its data behind: {left}"


def test_module_entry_point_runs_the_demo(tmp_path: Path) -> None:
    out, tmpdir = tmp_path / "out", tmp_path / "tmp"
    tmpdir.mkdir()
    args = ["demo", "--items", "60", "--out", str(out), "--no-progress"]
    done = subprocess.run(
        [sys.executable, "-m", "headrace", *args],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        env={**os.environ, "TMPDIR": str(tmpdir)},
        check=False,
    )
    _assert_demo_ran(done, out, tmpdir)


def test_demo_with_progress(tmp_path: Path) -> None:
    done = _headrace("demo", "--items", "60", "--out", str(tmp_path), tmpdir=tmp_path / "tmp")
    _assert_demo_ran(done, tmp_path, tmp_path / "tmp")


def test_demo_without_rich_falls_back(tmp_path: Path) -> None:
    # A None entry in sys.modules makes `import rich` fail as if it were not installed.
    done = _headrace(
        "demo",
        "--items",
        "60",
        "--out",
        str(tmp_path),
        tmpdir=tmp_path / "tmp",
        pre="import sys; sys.modules['rich'] = None",
    )
    _assert_demo_ran(done, tmp_path, tmp_path / "tmp")
    assert 'pip install "headrace[progress]"' in done.stderr


def test_version() -> None:
    done = _headrace("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"headrace {importlib.metadata.version('headrace')}"


def test_console_script_version() -> None:
    script = Path(sys.executable).parent / "headrace"
    if not script.is_file():
        pytest.skip(f"no console script next to {sys.executable} (not installed with pip)")
    done = subprocess.run(
        [str(script), "--version"],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("headrace ")


def test_no_command_prints_help() -> None:
    done = _headrace()
    assert done.returncode == 2
    assert "demo" in done.stderr


def test_bad_item_count_is_refused() -> None:
    done = _headrace("demo", "--items", "0")
    assert done.returncode == 2
    assert "--items" in done.stderr


def test_help_lists_every_command_with_an_example() -> None:
    from headrace._cli import COMMANDS

    done = _headrace("--help")
    assert done.returncode == 0, done.stderr
    for name in COMMANDS:
        assert name in done.stdout
        sub = _headrace(name, "--help")
        assert sub.returncode == 0, sub.stderr
        assert f"example:\n  headrace {name}" in sub.stdout, sub.stdout


def test_every_subcommand_module_is_registered() -> None:
    """A subcommand is one module in headrace/_cli/ plus its name in COMMANDS."""
    from headrace import _cli

    modules = {p.stem for p in Path(_cli.__file__).parent.glob("*.py")}
    commands = {m for m in modules if not m.startswith("_")}
    assert commands == set(_cli.COMMANDS)
