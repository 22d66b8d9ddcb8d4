"""Workers of an `hr.ArrayJob` share the input's pages instead of copying them.

Each task reads every byte of a 32 MiB input in a worker process and reports how the worker's
private memory and PSS (/proc/self/smaps_rollup) grew meanwhile. A copy would add the whole
input to private memory; a shared mapping adds pages that the parent (which wrote them) also
maps, so they are not private and only a share of them counts in the worker's PSS.
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
    # The first task of each worker maps every page (Rss grows by the input), yet its private
    # memory does not grow by the input and its PSS grows by at most half of it (the parent
    # shares every page).
    first = max(grown, key=lambda g: g["rss"])
    assert first["rss"] >= 0.9 * SIZE, grown
    for g in grown:
        assert g["private"] < 0.1 * SIZE, grown
        assert g["pss"] <= 0.55 * SIZE, grown
