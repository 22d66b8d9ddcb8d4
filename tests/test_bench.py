"""``headrace bench``, run as a user runs it: the command works and produces figures.

A benchmark is not a test: this asserts that the quick W1 run without peers produced figures for
headrace and for the physical references, never how fast they are.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

#: The quick W1 without peers takes a few seconds; the limit leaves room for a loaded machine.
BENCH_TIMEOUT_S = 100


@pytest.mark.slow
@pytest.mark.timeout(BENCH_TIMEOUT_S + 20)
def test_bench_quick_w1_without_peers(tmp_path: Path) -> None:
    figures = tmp_path / "bench.json"
    code = "import sys\nfrom headrace._cli import main\nsys.exit(main(sys.argv[1:]))"
    args = ["bench", "--quick", "--workload", "W1", "--no-peers", "--json", str(figures)]
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=BENCH_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"

    data = json.loads(figures.read_text(encoding="utf-8"))
    assert data["quick"] is True
    [w1] = data["workloads"]
    assert w1["name"] == "W1"
    rows = {row["key"]: row for row in w1["rows"]}
    assert set(rows) == {"headrace"}, "--no-peers ran a peer"
    headrace = rows["headrace"]
    assert headrace["status"] == "ok", headrace["note"]
    assert len(headrace["runs"]) == data["repeats"] == 1
    assert headrace["stats"]["items_per_s"]["median"] > 0
    [references] = data["references"]["rows"]
    for key in ("memcpy_gb_per_s", "pickle_gb_per_s", "pipe_gb_per_s"):
        assert references["stats"][key]["median"] > 0, key

    assert "W1" in done.stdout and "headrace" in done.stdout, done.stdout
    assert "memcpy" in done.stdout, done.stdout
    # Leftover processes, shared memory and temp dirs are caught by the autouse fixture.

    # BENCHMARKS.md from it, with the same run standing in for a one-shot (--cold) one.
    page = tmp_path / "BENCHMARKS.md"
    render = [sys.executable, "-m", "benchmarks.report", str(figures)]
    done = subprocess.run(
        [*render, "--cold", str(figures), "--markdown", str(page)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).parents[1],
    )
    assert done.returncode == 0, done.stderr
    text = page.read_text(encoding="utf-8")
    assert text.count("## W1:") == 1 and "### W1 one-shot:" in text


@pytest.mark.slow
@pytest.mark.timeout(BENCH_TIMEOUT_S + 20)
def test_bench_without_pyzmq_says_so_and_succeeds(tmp_path: Path) -> None:
    """W5b's ZMQStreamer case needs pyzmq: without it, the case is skipped with the extra to
    install, the run still succeeds, and the goals table speaks to a user."""
    # Hide pyzmq from the parent, which decides what to skip (each case runs in a child).
    code = (
        "import sys, importlib.util\n"
        "real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, *a: None if name == 'zmq' else real(name, *a)\n"
        "from headrace._cli import main\n"
        "sys.exit(main(sys.argv[1:]))"
    )
    args = ["bench", "--quick", "--workload", "W5b", "--no-peers"]
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=BENCH_TIMEOUT_S,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    hint = 'W5b headrace: skipped: pyzmq not installed (pip install "headrace[zmq]")'
    assert hint in done.stderr, done.stderr
    assert "Goals: what headrace aims for" in done.stdout, done.stdout
    assert "issue" not in done.stdout.lower(), done.stdout
