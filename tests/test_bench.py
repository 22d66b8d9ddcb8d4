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
