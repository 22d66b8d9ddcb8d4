"""`hr.ArrayJob`: map and stack equal a serial reference on every backend, outputs written by
workers are visible in the parent, and misuse gives clear errors."""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

import headrace as hr
from headrace._arrays import _storage

#: (backend, storage) pairs every functional test runs on.
SETUPS = [
    ("inline", "auto"),
    ("thread", "auto"),
    ("process", "shm"),
    ("process", "file"),
]


def job_of(setup: tuple[str, str], **arrays: Any) -> hr.ArrayJob:
    backend, storage = setup
    return hr.ArrayJob(workers=2, backend=backend, storage=storage, **arrays)  # type: ignore[arg-type]


def row_block(task: tuple[int, int], arrays: Any) -> float:
    """Fills rows lo:hi of P with X @ W for those rows; returns the block's sum of y."""
    lo, hi = task
    arrays.P[lo:hi] = arrays.X[lo:hi] @ arrays.W
    return float(arrays.y[lo:hi].sum())


def scale_layer(task: tuple[int, int], arrays: Any) -> int:
    lo, hi = task
    arrays.output[lo:hi] = 2.0 * arrays.input[lo:hi, :2] + 1.0
    return hi - lo


@pytest.fixture(params=SETUPS, ids=lambda s: "-".join(s))
def setup(request: pytest.FixtureRequest) -> tuple[str, str]:
    return request.param  # type: ignore[no-any-return]


def test_map_equals_a_serial_reference_and_outputs_reach_the_parent(
    setup: tuple[str, str],
) -> None:
    rng = np.random.default_rng(0)
    X, W, y = rng.standard_normal((40, 6)), rng.standard_normal((6, 3)), rng.standard_normal(40)
    tasks = [(lo, lo + 5) for lo in range(0, 40, 5)]
    with job_of(setup, X=X, W=W, y=y) as job:
        P = job.output("P", shape=(40, 3), dtype="f8")
        results = job.map(row_block, tasks)
        seen_inside = P.copy()
    assert results == [float(y[lo:hi].sum()) for lo, hi in tasks]
    np.testing.assert_allclose(seen_inside, X @ W)
    np.testing.assert_allclose(P, X @ W)  # still valid after the job's segments are gone


def test_stack_feeds_each_layer_the_previous_output(setup: tuple[str, str]) -> None:
    X = np.arange(20.0).reshape(10, 2)
    tasks = [(0, 4), (4, 10)]
    with job_of(setup, X=X) as job:
        A = job.output("A", (10, 2))
        B = job.output("B", (10, 2))
        Z = job.stack([(scale_layer, tasks, A), (scale_layer, tasks, "B")])
        assert job.layer_results == [[4, 6], [4, 6]]
    np.testing.assert_allclose(A, 2 * X + 1)
    np.testing.assert_allclose(Z, 2 * (2 * X + 1) + 1)
    assert Z is not None and np.shares_memory(Z, B)


def test_stack_from_a_named_input() -> None:
    X, V = np.zeros((4, 2)), np.ones((4, 2))
    with hr.ArrayJob(X=X, V=V) as job:
        out = job.output("out_", (4, 2))
        Z = job.stack([(scale_layer, [(0, 4)], out)], input="V")
    np.testing.assert_allclose(Z, 3.0)


class Counter:
    """A class task: instantiated once per worker."""

    made: ClassVar[list[int]] = []

    def __init__(self) -> None:
        Counter.made.append(id(self))

    def __call__(self, task: int, arrays: Any) -> float:
        return float(arrays.X[task])


def test_a_class_is_instantiated_once_per_worker() -> None:
    Counter.made = []
    with hr.ArrayJob(X=np.arange(30.0), workers=3) as job:
        assert job.map(Counter, range(30)) == [float(i) for i in range(30)]
    assert 1 <= len(Counter.made) <= 3


def pid_and_value(task: int, arrays: Any) -> tuple[int, float]:
    return os.getpid(), float(arrays.X[task])


def test_process_tasks_run_in_other_processes_on_odd_inputs() -> None:
    base = np.arange(60.0).reshape(6, 10)
    inputs = {
        "X": base[:, ::3].ravel(),  # not contiguous: copied once into shared memory
        "F": np.asfortranarray(base),
        "E": np.zeros((0, 3)),
        "S": np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]),
    }
    with hr.ArrayJob(inputs, workers=2, backend="process") as job:
        job.output("empty", (0,))
        out = job.map(pid_and_value, range(4))
        assert job.arrays.F.flags.f_contiguous or job.arrays.F.flags.c_contiguous
        np.testing.assert_array_equal(job.arrays.F, base)
        assert job.arrays.S["b"][0] == 2.0
    assert [v for _, v in out] == [float(v) for v in base[:, ::3].ravel()[:4]]
    assert {pid for pid, _ in out} - {os.getpid()}


def test_a_file_memmap_input_is_mapped_where_it_is(tmp_path: Path) -> None:
    path = tmp_path / "X.npy"
    np.save(path, np.arange(100.0))
    X = np.load(path, mmap_mode="r")
    before = set(os.listdir("/dev/shm"))
    with hr.ArrayJob(X=X, backend="process") as job:
        made = {n for n in set(os.listdir("/dev/shm")) - before if n.startswith("hr-")}
        assert job.map(pid_and_value, [99])[0][1] == 99.0
    assert not made  # no copy of the input in /dev/shm


def test_a_copy_on_write_memmap_input_is_copied_with_its_changes(tmp_path: Path) -> None:
    path = tmp_path / "X.npy"
    np.save(path, np.zeros(4))
    X = np.load(path, mmap_mode="c")
    X[2] = 5.0  # only in this process's copy of the page
    with hr.ArrayJob(X=X, backend="process") as job:
        assert job.map(pid_and_value, [2])[0][1] == 5.0


def test_an_array_too_large_for_dev_shm_goes_to_a_private_folder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_storage, "_free_shm", lambda: 0)
    with hr.ArrayJob(X=np.arange(10.0), backend="process") as job:
        P = job.output("P", 10)
        job.map(lambda i, a: a.P.__setitem__(i, a.X[i] * 2), range(10))
        store = job._store
        assert store is not None and store.folder is not None
        folder = store.folder
        assert folder.stat().st_mode & 0o777 == 0o700
        assert sorted(p.suffix for p in folder.iterdir()) == ["", ".dat", ".dat"]  # + the marker
    assert not folder.exists()
    np.testing.assert_allclose(P, np.arange(10.0) * 2)


# --- clear errors ---------------------------------------------------------------------------


def test_an_input_that_is_not_an_array_is_refused() -> None:
    with pytest.raises(TypeError, match=r"input 'X' must be a NumPy array, got list"):
        hr.ArrayJob(X=[1, 2, 3])
    with pytest.raises(TypeError, match="holds Python objects"):
        hr.ArrayJob(X=np.array([object()]))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"workers": 0}, ValueError, "workers must be at least 1"),
        ({"workers": 1.5}, TypeError, "workers must be an int"),
        ({"backend": "gpu"}, ValueError, "backend must be one of"),
        ({"storage": "disk"}, ValueError, "storage must be one of"),
        ({"start_method": "magic"}, ValueError, "start_method must be one of"),
        ({"engine": object()}, ValueError, "local engine only"),
        ({"input": np.zeros(1)}, ValueError, "reserved"),
        ({"_X": np.zeros(1)}, ValueError, "reserved"),
    ],
)
def test_bad_options_are_refused(kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        hr.ArrayJob(**kwargs)


def write_past_the_end(task: int, arrays: Any) -> None:
    arrays.P[arrays.P.shape[0] + task] = 1.0


def write_the_input(task: int, arrays: Any) -> None:
    arrays.X.flags.writeable = True
    arrays.X[0] = 1.0


def test_a_write_outside_the_output_names_the_task(setup: tuple[str, str]) -> None:
    with job_of(setup, X=np.zeros(3)) as job:
        job.output("P", 3)
        with pytest.raises(IndexError, match="out of bounds") as info:
            job.map(write_past_the_end, [7])
    notes = getattr(info.value, "__notes__", [])
    assert any("ArrayJob task 7" in note for note in notes), notes


def test_workers_cannot_write_an_input_on_the_process_backend() -> None:
    X = np.zeros(3)
    with hr.ArrayJob(X=X, backend="process") as job, pytest.raises(ValueError):
        job.map(write_the_input, [0])
    assert X[0] == 0.0


def test_inputs_are_read_only_views_on_threads() -> None:
    with hr.ArrayJob(X=np.zeros(3)) as job, pytest.raises(ValueError, match="read-only"):
        job.map(lambda t, a: a.X.__setitem__(0, 1.0), [0])


def test_a_job_used_after_its_with_block_says_so() -> None:
    with hr.ArrayJob(X=np.zeros(3)) as job:
        pass
    for call in (
        lambda: job.map(pid_and_value, [0]),
        lambda: job.output("P", 3),
        lambda: job.stack([]),
        lambda: job.arrays,
    ):
        with pytest.raises(hr.ClosedError, match="the job is closed"):
            call()
    with pytest.raises(hr.ClosedError, match="entered once"), job:
        pass


def test_a_job_used_before_its_with_block_says_so() -> None:
    job = hr.ArrayJob(X=np.zeros(3))
    with pytest.raises(hr.ClosedError, match="inside `with"):
        job.map(pid_and_value, [0])


def test_bad_outputs_and_layers_are_refused() -> None:
    with hr.ArrayJob(X=np.zeros(3)) as job:
        with pytest.raises(ValueError, match="already has an array named 'X'"):
            job.output("X", 3)
        with pytest.raises(TypeError, match="shape must be"):
            job.output("P", (3.0,))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="must not be negative"):
            job.output("P", -1)
        with pytest.raises(ValueError, match="at least one layer"):
            job.stack([])
        with pytest.raises(TypeError, match=r"layer 0 must be a tuple \(fn, tasks, output\)"):
            job.stack([scale_layer])
        with pytest.raises(ValueError, match="not an output of this job"):
            job.stack([(scale_layer, [], "X")])
        with pytest.raises(ValueError, match=r"not an array made by job\.output"):
            job.stack([(scale_layer, [], np.zeros(3))])


def test_the_parent_unmaps_a_jobs_segments_when_it_ends() -> None:
    # Without the cyclic garbage collector: a class made per call must not keep the arrays.
    gc.disable()
    try:
        with hr.ArrayJob(X=np.ones(100_000), workers=2, backend="process") as job:
            job.output("P", 10)
            job.map(pid_and_value, range(4))
            store = job._store
            assert store is not None
            token = store.token
        del job
        maps = Path("/proc/self/maps").read_text()
    finally:
        gc.enable()
    assert f"/dev/shm/hr-{token}-" not in maps
