"""``headrace run MODULE:ATTR``, run as a user runs it: in a fresh interpreter, from a folder
that holds the user's pipeline module."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: Under pytest's 60 s timeout, so that a hung command fails here with its output.
TIMEOUT_S = 45

PIPELINE = textwrap.dedent(
    """
    import itertools
    import sys

    import headrace as hr


    def square(x):
        return x * x


    def check(x):
        if x == 3:
            raise ValueError(f"no good: {x}")
        return x


    def draw(x):
        return int(hr.rng().integers(1 << 30))


    def mark(x):
        if x == 0:
            print("started", flush=True)
        return x


    def show(x):
        # One write: print() makes several, and the command prints its own lines meanwhile.
        sys.stdout.write(f"item {x}\\n")
        sys.stdout.flush()


    stream = hr.from_iterable(range(20)).map(square, workers=2, backend="process", name="square")
    failing = hr.from_iterable(range(10)).map(check, name="check")
    draws = hr.from_iterable(range(6)).map(draw, workers=3, name="draw").sink(show, name="show")
    endless = hr.from_iterable(itertools.count()).map(mark, name="mark")
    number = 5


    def build():
        xs = hr.from_iterable(range(4))
        return xs.map(square).sink(show, name="show"), xs.map(abs, name="abs")


    def needs(x):
        return hr.from_iterable([x])
    """
)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "userpipe.py").write_text(PIPELINE, encoding="utf-8")
    return tmp_path


def headrace(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headrace", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def test_a_stream_runs_with_its_report_json_and_dot(folder: Path) -> None:
    done = headrace(
        folder, "run", "userpipe:stream", "--json", "out/report.json", "--dot", "out/run.dot"
    )
    assert done.returncode == 0, done.stderr
    assert "square" in done.stdout and "process" in done.stdout, done.stdout
    report = json.loads((folder / "out" / "report.json").read_text(encoding="utf-8"))
    assert {"wall_s", "bottleneck", "stages", "errors"} <= set(report)
    square = next(s for s in report["stages"] if s["name"] == "square")
    assert (square["items_in"], square["items_out"], square["workers"]) == (20, 20, 2)
    assert report["errors"] == []
    assert (folder / "out" / "run.dot").read_text(encoding="utf-8").lstrip().startswith("digraph")


def test_a_file_path_and_a_function_returning_a_sink_and_a_stream(folder: Path) -> None:
    done = headrace(folder, "run", str(folder / "userpipe.py") + ":build")
    assert done.returncode == 0, done.stderr
    shown = [line for line in done.stdout.splitlines() if line.startswith("item ")]
    assert shown == ["item 0", "item 1", "item 4", "item 9"]
    assert "abs" in done.stdout


def test_the_seed_makes_runs_repeatable(folder: Path) -> None:
    first = headrace(folder, "run", "userpipe:draws", "--seed", "7")
    second = headrace(folder, "run", "userpipe:draws", "--seed", "7")
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    draws = [
        [ln for ln in d.stdout.splitlines() if ln.startswith("item ")] for d in (first, second)
    ]
    assert len(draws[0]) == 6
    assert draws[0] == draws[1]


def test_a_failed_run_names_the_stage_and_item_and_exits_1(folder: Path) -> None:
    done = headrace(folder, "run", "userpipe:failing", "--json", "report.json")
    assert done.returncode == 1, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == "headrace run: FAILED in stage 'check', item 3: ValueError: no good: 3"
    assert "Traceback in the worker" in done.stderr and "in check" in done.stderr
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    assert [(e["stage"], e["index"], e["type"]) for e in report["errors"]] == [
        ("check", 3, "ValueError")
    ]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("userpipe", "expected MODULE:ATTR"),
        ("nosuchmodule:stream", "cannot import 'nosuchmodule'"),
        ("missing/file.py:stream", "no file"),
        ("userpipe:nothing", "has no attribute 'nothing'"),
        ("userpipe:number", "gave int, not a Stream"),
        ("userpipe:needs", "takes arguments"),
    ],
)
def test_what_cannot_run_is_a_usage_error(folder: Path, target: str, message: str) -> None:
    done = headrace(folder, "run", target)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
    assert done.stderr.startswith("headrace run: ")


def test_ctrl_c_exits_130(folder: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "headrace", "run", "userpipe:endless"],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "started"  # the run is under way
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, out + err
    assert "headrace run: interrupted" in err
    # The report of what ran is printed when the interrupt lands after the run has started;
    # the stage can print "started" while the run is still being set up.
    assert out == "" or "mark" in out, out
