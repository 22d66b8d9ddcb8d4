"""A large in-memory input is shared in several segments filled in parallel ("stripes"): workers
and the parent see one array with the input's exact bytes, read-only, without a copy; a failure
while making them leaves no segment behind; the job removes them all when it ends."""

from __future__ import annotations

import mmap
import os
from typing import Any

import numpy as np
import pytest

import headrace as hr
from headrace import _shm
from headrace._arrays import _storage, _stripes

#: A small stripe size for the tests (the default makes stripes of inputs of 128 MiB and up).
SMALL = 1 << 20


@pytest.fixture
def small_stripes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_stripes, "STRIPE_MIN", SMALL)
    monkeypatch.setattr(_stripes, "_cores", lambda: 3)


def segments_of(job: hr.ArrayJob) -> set[str]:
    """The job's segments in /dev/shm (other programs on the machine may have their own)."""
    assert job._store is not None
    return {n for n in os.listdir(_shm.SHM_DIR) if n.startswith(f"hr-{job._store.token}-")}


def existing(names: list[str]) -> list[str]:
    return [n for n in names if os.path.exists(_shm.shm_path(n))]


def probe(task: int, arrays: Any) -> tuple[float, float, bool, int]:
    """The input at a stripe boundary and its last element; whether it can be made writable."""
    X = arrays.X
    try:
        X.flags.writeable = True
        writable = True
    except ValueError:
        writable = False
    return float(X[task]), float(X[-1]), writable, int(X.sum(dtype=np.int64))


def test_stripe_lengths_are_whole_pages_but_the_last_and_add_up(small_stripes: None) -> None:
    assert _stripes.stripe_lengths(SMALL) == [SMALL]  # too small for two stripes
    size = 3 * SMALL + 12_345
    lengths = _stripes.stripe_lengths(size)
    assert len(lengths) == 3 and sum(lengths) == size
    assert all(length % mmap.PAGESIZE == 0 for length in lengths[:-1])
    assert _stripes.stripe_lengths(100 * SMALL) == [pytest.approx(100 * SMALL / 3, rel=0.01)] * 3


def test_a_striped_input_is_one_read_only_array_in_workers_and_parent(
    small_stripes: None,
) -> None:
    X = np.arange(3 * SMALL // 8 + 1_001, dtype=np.int64)  # ends mid-page
    with hr.ArrayJob(X=X, workers=2, backend="process") as job:
        placement = job._placements["X"]
        assert len(placement.parts) == 3
        assert {name for name, _ in placement.parts} <= segments_of(job)
        # An element on each side of each boundary between stripes, and the last one.
        edges = [n // 8 for n in np.cumsum([length for _, length in placement.parts])[:-1]]
        tasks = [i for e in edges for i in (e - 1, e)] + [len(X) - 1]
        results = job.map(probe, tasks)
        view = job.arrays.X
        with pytest.raises(ValueError):
            view.flags.writeable = True
        np.testing.assert_array_equal(view, X)
    assert not segments_of(job)
    assert [r[0] for r in results] == [float(X[i]) for i in tasks]
    assert all(r[1] == float(X[-1]) for r in results)
    assert not any(r[2] for r in results)  # an input cannot be made writable in a worker
    assert {r[3] for r in results} == {int(X.sum())}


def test_a_failed_stripe_removes_the_others_and_falls_back_to_a_file(
    small_stripes: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = _shm.create
    calls: list[str] = []

    def second_fails(name: str, size: int, content: Any = None) -> Any:
        calls.append(name)
        if len(calls) == 2:
            raise OSError(28, "No space left on device (simulated)")
        return real(name, size, content)

    monkeypatch.setattr(_shm, "create", second_fails)
    X = np.arange(3 * SMALL // 8, dtype=np.float64)
    with hr.ArrayJob(X=X, workers=2, backend="process") as job:
        assert len(calls) == 3
        assert not existing(calls)  # the two stripes made were removed at once
        assert job._placements["X"].kind == "file"
        assert job.map(lambda i, arrays: float(arrays.X[i]), [0, len(X) - 1]) == [0.0, X[-1]]
    calls.clear()
    with (
        pytest.raises(OSError, match="simulated"),
        hr.ArrayJob(X=X, workers=2, backend="process", storage="shm"),
    ):
        pass
    assert len(calls) == 3 and not existing(calls)


def test_small_and_non_contiguous_inputs_are_not_striped(small_stripes: None) -> None:
    store = _storage.Store(local=False, storage="shm")
    try:
        small = store.share_input("a", np.ones(SMALL // 8))
        fortran = store.share_input("b", np.asfortranarray(np.ones((SMALL // 64, 32))))
        assert small.parts == () and fortran.parts == ()
        assert fortran.array is not None and fortran.array.sum() == SMALL // 2
    finally:
        store.close()
