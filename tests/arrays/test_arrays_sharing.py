"""Workers of an `hr.ArrayJob` share the input's pages instead of copying them.

Each task reads every byte of a 32 MiB input in a worker process and reports how the worker's
memory (/proc/self/smaps_rollup) grew meanwhile. A copy would add the whole input to its
anonymous memory; a shared mapping adds pages of the segment or file (page cache, shared with
every process that maps them: smaps calls them private only while no other process touched
them, and the parent writes them with write(), not through its own mapping).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import headrace as hr

SIZE = 32 * 2**20
ROLLUP = Path("/proc/self/smaps_rollup")

pytestmark = pytest.mark.skipif(not ROLLUP.exists(), reason="needs /proc/self/smaps_rollup")


def _memory() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0]) * 1024
    return fields


def touch_all(task: int, arrays: Any) -> dict[str, int]:
    before = _memory()
    total = float(arrays.X.sum())  # reads every page of the input
    after = _memory()
    arrays.S[task] = total
    private = ("Private_Clean", "Private_Dirty")
    return {
        "anonymous": after["Anonymous"] - before["Anonymous"],
        "private": sum(after[k] - before[k] for k in private),
        "pss": after["Pss"] - before["Pss"],
        "rss": after["Rss"] - before["Rss"],
    }


@pytest.mark.parametrize("storage", ["shm", "file"])
def test_workers_do_not_copy_the_input(storage: str) -> None:
    X = np.random.default_rng(0).standard_normal(SIZE // 8)
    with hr.ArrayJob(X=X, workers=2, backend="process", storage=storage) as job:  # type: ignore[arg-type]
        S = job.output("S", 2)
        grown = job.map(touch_all, [0, 1])
    np.testing.assert_allclose(S, X.sum())
    # The first task of each worker maps every page (Rss grows by the input), yet its
    # anonymous memory (where a copy would be) does not grow.
    first = max(grown, key=lambda g: g["rss"])
    assert first["rss"] >= 0.9 * SIZE, grown
    for g in grown:
        assert g["anonymous"] < 0.1 * SIZE, grown
        assert g["pss"] <= 1.05 * SIZE, grown
