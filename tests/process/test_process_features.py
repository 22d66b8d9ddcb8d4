"""Process workers: arrays through shared memory, per-worker state, logs, bounds."""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import headrace as hr
from headrace import _shm
from headrace._flow import MAX_CHUNK

#: The prefix of the segments of this process's runs (other programs may run headrace too).
OURS = f"hr-{os.getpid()}-"

pytestmark = pytest.mark.timeout(60)

PROC = {"backend": "process", "workers": 2}
BACKEND = {"backend": "process"}
T = _shm.THRESHOLD


def identity(x: Any) -> Any:
    return x


def inc(x: int) -> int:
    return x + 1


def odd_arrays() -> list[Any]:
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    return [
        np.empty(0),
        np.array(3.5),
        base[:, ::2],  # non-contiguous
        np.asfortranarray(np.arange(T, dtype=np.float32).reshape(64, -1)),  # Fortran, > T
        np.zeros(3, dtype=[("a", "i4"), ("b", "f8")]),  # structured
        np.zeros(T, dtype=[("a", "i4"), ("b", "f8")]),  # structured, large
        np.array([{"k": 1}, "text", None], dtype=object),  # object: pickled
        np.ones((T // 8 - 1,)),  # just under the threshold (bytes)
        np.ones((T // 8,)),  # exactly the threshold
        np.ones((T // 8 + 1,)),
        np.ones((2**20 // 8 - 1,)),  # around a 1 MiB slot
        np.ones((2**20 // 8 + 1,)),
        np.arange(3 * 2**20, dtype=np.uint8)[::-1],  # negative strides
        {"image": np.full((300, 300), 7, np.uint8), "label": 3, "meta": [np.ones(T)]},
        (np.arange(T), np.arange(T // 2)),
    ]


def _same_objects(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> bool:
    return list(a.ravel()) == list(b.ravel())


def same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return (
            isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and (_same_objects(a, b) if a.dtype == object else np.array_equal(a, b))
        )
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, tuple | list):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return bool(a == b)


def test_odd_arrays_arrive_equal_both_ways() -> None:
    items = odd_arrays()
    out = hr.from_iterable(items).map(identity, **PROC).collect()
    assert len(out) == len(items)
    for sent, got in zip(items, out, strict=True):
        assert same(sent, got), (sent, got)


def test_large_arrays_arrive_in_shared_memory_without_a_copy() -> None:
    out = hr.from_iterable(range(4)).map(lambda i: np.full(2**18, i), **PROC)
    arrays = out.collect()
    for i, a in enumerate(arrays):
        assert (a == i).all()
        assert not a.flags.owndata  # a view of the slot, not a copy
        assert a.flags.writeable


def test_slots_are_reused_not_created_per_item() -> None:
    seen = set()
    stream = hr.from_iterable(range(200)).map(lambda i: np.full(2**18, i), **PROC, maxsize=2)
    with stream.open() as run:
        for i, a in enumerate(run):
            assert a[0] == i
            seen |= {n for n in os.listdir(_shm.SHM_DIR) if n.startswith(OURS)}
    # 200 arrays, slots for those in flight only: 2 workers x 2 batches of 4 (8 MiB of results
    # each), 2 in the channel, a few in the reorder window; plus one board per stage
    assert len(seen) <= 30, sorted(seen)


def test_items_larger_than_the_budget_go_through_the_pipe() -> None:
    arrays = [np.full(2**20, i, dtype=np.float64) for i in range(3)]
    with pytest.warns(RuntimeWarning, match="so small"):
        out = hr.from_iterable(arrays).map(lambda a: a * 2, **PROC).collect(memory="1MB")
    assert [float(a[0]) for a in out] == [0.0, 2.0, 4.0]
    assert all(a.shape == (2**20,) for a in out)


def test_a_full_dev_shm_at_start_is_a_clear_error(monkeypatch: Any) -> None:
    """Nothing can be reserved, not even the board that names each worker's item: the stage
    cannot start, and says why (never a SIGBUS later). A pool that fills up while running
    falls back to the pipe: `test_pool_falls_back_when_it_cannot_reserve`."""

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_shm.os, "posix_fallocate", full, raising=True)
    arrays = [np.full(2**17, i) for i in range(4)]
    with pytest.raises(OSError, match="No space left"):
        hr.from_iterable(arrays).map(lambda a: int(a[0]), **PROC).collect()


def test_pool_falls_back_when_it_cannot_reserve(monkeypatch: Any) -> None:
    pool = _shm.SlotPool(_shm.run_token(), 2**30)
    try:
        monkeypatch.setattr(
            _shm.os, "posix_fallocate", lambda *a: (_ for _ in ()).throw(OSError(28, "full"))
        )
        with pytest.warns(ResourceWarning, match="through the pipe"):
            data, places = _shm.encode(np.ones(T), pool, os.getpid())
        assert places == [] and pool.fallbacks == 1
        assert np.array_equal(_shm.decode(data, places, _shm.Mapper()), np.ones(T))
    finally:
        pool.close()


def test_codec_round_trip_and_slot_reuse_in_one_process() -> None:
    pool, mapper = _shm.SlotPool(_shm.run_token(), 2**26), _shm.Mapper()
    try:
        for i in range(10):
            data, places = _shm.encode({"x": np.full(T, i)}, pool, os.getpid())
            assert len(places) == 1
            got = _shm.decode(data, places, mapper)
            assert (got["x"] == i).all()
            del got  # frees the slot for the next round
        assert pool.reserved == _shm._round_up(T * 8)  # one slot, reused ten times
    finally:
        pool.close()
        mapper.close()
    assert not [n for n in os.listdir(_shm.SHM_DIR) if n.startswith(f"hr-{pool.token}")]


def test_workers_of_a_stage_share_their_slots() -> None:
    """A slot one worker made and the consumer freed is reused by another worker of the stage
    (two `StagePool`s on one directory stand for two worker processes); the budget is the
    stage's, not each worker's."""
    token, mapper = _shm.run_token(), _shm.Mapper()
    directory = f"hr-{token}-slots"
    _shm.make_directory(directory)
    size = _shm._round_up(T * 8)
    one, two = (_shm.StagePool(token, 2 * size, directory) for _ in range(2))
    try:
        data, places = _shm.encode(np.full(T, 1.0), one, os.getpid())
        got = _shm.decode(data, places, mapper)
        assert float(got[0]) == 1.0
        del got  # the consumer is done: the slot is free for any worker
        data, again = _shm.encode(np.full(T, 2.0), two, os.getpid())
        assert again[0][0] == places[0][0], "the other worker made a new slot"
        held = _shm.decode(data, again, mapper)
        # the slot is in use: one more slot fits the stage's budget, a third does not
        _shm.encode(np.full(T, 3.0), one, os.getpid())
        _data, overflow = _shm.encode(np.full(T, 4.0), two, os.getpid())
        assert overflow == [] and two.fallbacks == 1
        assert float(held[0]) == 2.0
    finally:
        one.close()
        two.close()
        mapper.close()
        _shm.remove_run(token)
    assert not [n for n in os.listdir(_shm.SHM_DIR) if n.startswith(f"hr-{token}")]


def test_a_slot_with_a_bad_header_is_refused() -> None:
    pool, mapper = _shm.SlotPool(_shm.run_token(), 2**26), _shm.Mapper()
    try:
        _data, places = _shm.encode(np.ones(T), pool, os.getpid())
        name, offset, length = places[0]
        with pytest.raises(ValueError, match="bad header"):
            mapper.view(name, offset, length + 2**26)  # longer than the slot
        with pytest.raises(ValueError, match="not a headrace"):
            mapper.view("../etc/passwd", 0, 1)
    finally:
        pool.close()
        mapper.close()


class Model:
    """A class instantiated once per worker process."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.calls = 0

    def __call__(self, x: int) -> tuple[int, int, int]:
        self.calls += 1
        return self.pid, id(self), self.calls


def test_a_class_is_instantiated_once_per_process() -> None:
    out = hr.from_iterable(range(40)).map(Model, **PROC).collect()
    by_pid: dict[int, set[int]] = {}
    for pid, instance, _ in out:
        by_pid.setdefault(pid, set()).add(instance)
    assert all(len(instances) == 1 for instances in by_pid.values())
    assert max(calls for _, _, calls in out) >= 2


def draws(_: int) -> tuple[int, float, float]:
    import time

    time.sleep(0.005)  # 200 items: 1 s of naps, so the second worker, started once the first
    # is set up, has items left to run
    return os.getpid(), random.random(), float(np.random.random())


def test_global_random_generators_differ_per_worker() -> None:
    out = hr.from_iterable(range(200)).map(draws, **PROC).collect()
    first: dict[int, tuple[float, float]] = {}
    for pid, a, b in out:
        first.setdefault(pid, (a, b))
    assert len(first) == 2, "both workers should have run items"
    (a1, b1), (a2, b2) = first.values()
    assert a1 != a2 and b1 != b2


def item_draw(x: int) -> float:
    return float(hr.rng().random())


def test_item_rng_does_not_depend_on_worker_count() -> None:
    one = hr.from_iterable(range(30)).map(item_draw, backend="process").collect(seed=11)
    two = hr.from_iterable(range(30)).map(item_draw, **PROC).collect(seed=11)
    thread = hr.from_iterable(range(30)).map(item_draw, workers=3).collect(seed=11)
    assert one == two == thread


def chatty(x: int) -> int:
    logging.getLogger("user.stage").warning("item %d seen", x)
    return x


def test_worker_log_records_reach_the_parent_naming_stage_and_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO):
        out = hr.from_iterable(range(4)).map(chatty, **PROC, name="talk").collect()
    assert out == [0, 1, 2, 3]
    records = [r for r in caplog.records if r.name == "user.stage"]
    assert sorted(r.getMessage() for r in records) == [f"item {i} seen" for i in range(4)]
    for r in records:
        assert r.headrace_stage == "talk"  # type: ignore[attr-defined]
        assert r.headrace_worker != os.getpid()  # type: ignore[attr-defined]
        assert r.processName.startswith("talk/worker-")


def wait_for_report(
    run: hr.Run, done: Callable[[hr.Report], bool], timeout: float = 20.0
) -> hr.Report:
    """Poll the run's figures until ``done(report)``: synchronise on observed state."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        report = run.report()
        if done(report):
            return report
        if time.monotonic() >= deadline:
            raise AssertionError(f"the run never reached the state waited for:\n{report}")
        time.sleep(0.01)


def test_a_slow_consumer_bounds_the_items_in_flight() -> None:
    pulled = 0

    def source() -> Any:
        nonlocal pulled
        for i in range(100_000):
            pulled += 1
            yield i

    stream = hr.from_iterable(source()).map(identity, **PROC)
    with stream.open() as run:
        for _i, _ in zip(range(50), run, strict=False):
            pass
        # Wait until everything upstream has filled up: every stage's output channel full.
        report = wait_for_report(run, lambda r: all(s.fill >= s.capacity for s in r.stages))
        in_flight = pulled - 50
    capacities = sum(s.capacity for s in report.stages)
    # Each channel holds its capacity plus one chunk; the process stage holds (DEPTH + 1)
    # chunks per worker; the source one in hand. A chunk is at most MAX_CHUNK small items.
    chunks = len(report.stages) + 3 * 2 + 1
    assert in_flight <= capacities + chunks * MAX_CHUNK, (in_flight, capacities)


def test_unknown_start_method_is_refused() -> None:
    with pytest.raises(ValueError, match="start_method"):
        hr.from_iterable([1]).map(identity, **PROC).collect(start_method="telepathy")


def test_a_callable_that_cannot_travel_fails_at_start_leaving_nothing() -> None:
    import threading

    lock = threading.Lock()
    with pytest.raises(TypeError, match="cannot be sent to a worker process"):
        hr.from_iterable([1]).map(lambda x: (lock, x), **PROC).collect()
    # the autouse fixture checks that no process, thread or segment was left behind


def test_a_worker_that_cannot_start_raises_instead_of_hanging(monkeypatch: Any) -> None:
    from headrace._backends import _process

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("cannot start a process here")

    monkeypatch.setattr(_process.Proc, "__init__", broken)
    with pytest.raises(RuntimeError, match="cannot start a process here"):
        hr.from_iterable(range(3)).map(identity, **PROC).collect()


def test_a_forkserver_that_cannot_start_falls_back_to_spawn(monkeypatch: Any) -> None:
    from headrace._backends import _process

    real = _process.Proc.__init__

    def picky(self: Any, ctx: Any, method: str) -> None:
        if method == "forkserver":
            raise OSError("AF_UNIX path too long")
        real(self, ctx, method)

    monkeypatch.setattr(_process.Proc, "__init__", picky)
    with pytest.warns(RuntimeWarning, match="forkserver could not start"):
        out = hr.from_iterable(range(3)).map(identity, **PROC).collect()
    assert out == [0, 1, 2]


def test_forkserver_workers_start_in_their_threads_every_stages_first_before_the_others(
    monkeypatch: Any,
) -> None:
    """The run's thread does not wait for the forkserver (on a first run it boots): it sets up
    every stage, and each stage's first worker is asked for before any second one."""
    import time

    from headrace._backends import _process

    _process.release_warm()  # every worker of this run is started, none taken warm
    real = _process.Proc.__init__
    go = threading.Event()
    asked: list[str] = []  # the supervisor threads that asked for a worker, in order

    def held(self: Any, ctx: Any, method: str) -> None:
        asked.append(threading.current_thread().name)
        assert go.wait(10), "a worker start was waited for by the run's thread"
        real(self, ctx, method)

    monkeypatch.setattr(_process.Proc, "__init__", held)
    stream = hr.from_iterable(range(20)).map(inc, **PROC).map(inc, **PROC)
    with stream.open(start_method="forkserver") as run:
        deadline = time.monotonic() + 10
        while len(asked) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # time for a second worker to be asked for, were it not held back
        assert sorted(asked) == ["headrace-inc#2-0", "headrace-inc-0"]
        go.set()
        assert sorted(run) == list(range(2, 22))
    # The second ones came after (one may have taken a worker the other stage gave back).
    assert set(asked[2:]) <= {"headrace-inc#2-1", "headrace-inc-1"}


def nap(x: Any) -> Any:
    import time

    time.sleep(0.01)
    return x


def napping(items: Any) -> Any:
    for x in items:
        yield nap(x)


@pytest.mark.parametrize("kind", ["map", "transform"])
def test_a_stages_other_workers_start_once_its_first_is_ready(monkeypatch: Any, kind: str) -> None:
    """They wait for the first one to be set up (its imports, on a 2-core machine, would
    otherwise compete with theirs), for at most `HEAD_START_S`: here far longer than the run,
    so the second worker starts during the run only if the first one's readiness (or, for a
    transform, its start) releases it."""
    from headrace._backends import _process
    from headrace._backends._process import _supervisor

    _process.release_warm()
    monkeypatch.setattr(_supervisor, "HEAD_START_S", 600.0)
    real = _process.Proc.__init__
    asked: list[str] = []

    def counted(self: Any, ctx: Any, method: str) -> None:
        asked.append(threading.current_thread().name)
        real(self, ctx, method)

    monkeypatch.setattr(_process.Proc, "__init__", counted)
    source = hr.from_iterable(range(40))  # 0.4 s of naps: the run outlasts a worker's start
    stream = source.map(nap, **PROC) if kind == "map" else source.transform(napping, **PROC)
    with stream.open(start_method="forkserver") as run:
        out = list(run)
        asked_in_run = list(asked)
    assert sorted(out) == list(range(40))
    name = "nap" if kind == "map" else "napping"
    assert sorted(asked_in_run) == [f"headrace-{name}-0", f"headrace-{name}-1"]


def slow_first(i: int) -> Any:
    if i == 0:
        import time

        time.sleep(1.0)
    return np.full(2**18, i)  # 2 MiB


def test_large_results_behind_a_slow_item_stay_bounded() -> None:
    """Ordered: while item 0 takes a second, the other worker must not pile up 2 MiB results
    in the reorder window (the stage keeps workers + 1 large results in flight)."""
    seen: set[str] = set()
    stream = hr.from_iterable(range(60)).map(slow_first, **PROC)
    with stream.open() as run:
        for i, a in enumerate(run):
            assert a[0] == i
            seen |= {n for n in os.listdir(_shm.SHM_DIR) if n.startswith(OURS)}
    # window (3) + the consumer channel (16 MiB: 8) + the consumer's two + slack for reuse
    assert len(seen) <= 20, sorted(seen)


def test_slots_are_private_random_and_reserved() -> None:
    """RELIABILITY, Security: random names, owner-only permissions, size reserved up front."""
    pools = [_shm.SlotPool(_shm.run_token(), 2**26) for _ in range(2)]
    try:
        names = []
        for pool in pools:
            _, places = _shm.encode(np.ones(T), pool, os.getpid())
            names.append(places[0][0])
        # hr-<owner pid>-<random>-<pid>-<random>: the owner is this process, the rest random
        assert names[0] != names[1] and names[0].split("-")[2] != names[1].split("-")[2]
        assert all(_shm.owner_pid(name) == os.getpid() for name in names)
        for name in names:
            st = os.stat(_shm.shm_path(name))
            assert st.st_mode & 0o777 == 0o600
            assert st.st_blocks * 512 >= st.st_size  # the pages are allocated, not sparse
    finally:
        for pool in pools:
            pool.close()


def test_the_sweep_removes_dead_runs_only() -> None:
    """A segment whose owner is dead is stale; one whose owner lives (this process) is not,
    and neither is a file that is not headrace's."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = int(child.stdout)
    names = [f"hr-{dead}-abc-{dead}-1", f"hr-{os.getpid()}-abc-{os.getpid()}-1"]
    for name in names:
        Path(_shm.shm_path(name)).write_bytes(b"x")
    try:
        assert names[0] in _shm.stale_segments()
        assert names[1] not in _shm.stale_segments()
        assert _shm.sweep_stale() >= 1
        assert not os.path.exists(_shm.shm_path(names[0]))
        assert os.path.exists(_shm.shm_path(names[1]))
    finally:
        for name in names:
            Path(_shm.shm_path(name)).unlink(missing_ok=True)


def test_a_long_lived_program_sweeps_dead_runs_again(monkeypatch: Any) -> None:
    """Not only a program's first process stage sweeps: later runs of a program that lives on
    remove what a neighbour killed meanwhile left (every `SWEEP_EVERY_S` seconds at most)."""
    from headrace._backends._process import _supervisor

    hr.from_iterable([1]).map(abs, backend="process").collect()  # the program's first sweep
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = int(child.stdout)
    stale = Path(_shm.shm_path(f"hr-{dead}-abc-{dead}-1"))
    stale.write_bytes(b"x")
    monkeypatch.setattr(_supervisor, "SWEEP_EVERY_S", 0.0, raising=False)
    try:
        assert hr.from_iterable([2]).map(abs, backend="process").collect() == [2]
        assert not stale.exists(), "a later run of this program did not sweep"
    finally:
        stale.unlink(missing_ok=True)


def test_remove_run_goes_on_past_an_entry_it_cannot_remove(monkeypatch: Any) -> None:
    pool = _shm.SlotPool(_shm.run_token(), 2**26)
    for _ in range(3):
        pool.take(T, os.getpid())
    made = sorted(n for n in os.listdir(_shm.SHM_DIR) if n.startswith(f"hr-{pool.token}-"))
    assert len(made) == 3
    real_unlink = os.unlink

    def refuse_first(path: Any, *args: Any, **kwargs: Any) -> None:
        if str(path).endswith(made[0]):
            raise PermissionError(13, "squatted")
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(_shm.os, "unlink", refuse_first)
    try:
        assert _shm.remove_run(pool.token) == 2
    finally:
        monkeypatch.undo()
        pool.close()
        _shm.remove_run(pool.token)
    assert not [n for n in os.listdir(_shm.SHM_DIR) if n.startswith(f"hr-{pool.token}-")]


def worker_pid(x: Any) -> int:
    return os.getpid()


def test_idle_workers_are_reused_by_the_next_run() -> None:
    """A later process stage of the same program takes the idle workers of an earlier run."""
    stream = hr.from_iterable(range(40)).map(worker_pid, **PROC)
    first = set(stream.collect())
    second = set(hr.from_iterable(range(40)).map(worker_pid, **PROC).collect())
    assert first and second <= first | second
    assert second & first, (first, second)  # a warm worker ran items of the second run


def test_a_failed_run_keeps_only_healthy_workers() -> None:
    """Only a worker that said it is idle is kept: the one running the failing item is not,
    and the next run works on what is kept."""
    from headrace._backends import _process

    def culprit_pid(x: Any) -> Any:
        if x == 3:
            raise ValueError(os.getpid())
        return os.getpid()

    _process.release_warm()
    with pytest.raises(ValueError) as info:
        hr.from_iterable(range(10)).map(culprit_pid, **PROC).collect()
    culprit = int(str(info.value))
    kept = [p.pid for procs in _process.WARM._idle.values() for p in procs]
    assert culprit not in kept
    assert all(Path(f"/proc/{pid}").exists() for pid in kept)
    assert hr.from_iterable(range(4)).map(abs, **PROC).collect() == [0, 1, 2, 3]


def test_warm_workers_end_with_the_program() -> None:
    code = (
        "import os, headrace as hr\n"
        "pids = set(hr.from_iterable(range(20)).map(lambda x: os.getpid(), workers=2,"
        " backend='process').collect())\n"
        "print(' '.join(map(str, sorted(pids))), flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    pids = [int(p) for p in done.stdout.split()]
    assert pids
    for pid in pids:  # gone (or a zombie that its dead parent's reaper has yet to collect)
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_closed_runs_release_their_file_descriptors_without_the_gc() -> None:
    """Pipes and sentinels of a finished run are closed when it closes, not when garbage is
    collected: many failing or abandoned runs do not pile up descriptors."""
    import gc

    from headrace._backends import _process

    def fail_at_50(x: int) -> int:
        if x == 50:
            raise ValueError(x)
        return x

    def count() -> int:
        return len(os.listdir("/proc/self/fd"))

    _process.release_warm()
    before = count()
    gc.disable()
    try:
        for _ in range(8):
            with pytest.raises(ValueError):
                hr.from_iterable(range(100)).map(fail_at_50, workers=4, **BACKEND).collect()
            for x in hr.from_iterable(range(10**6)).map(abs, workers=4, **BACKEND):
                if x == 500:
                    break
        _process.release_warm()
        assert count() <= before + 2, (before, count())
    finally:
        gc.enable()


def test_a_warm_worker_draws_afresh_for_each_run() -> None:
    """The same seed gives the same draws in the next run, also on the same (warm) worker: no
    generator made for an item of an earlier run is reused."""

    def draw(x: int) -> float:
        return float(hr.rng().random())

    stream = hr.from_iterable(range(5)).map(draw, backend="process")
    first = stream.collect(seed=3)
    assert stream.collect(seed=3) == first
    assert stream.collect(seed=3) == first


def test_building_a_process_stage_starts_the_forkserver_early() -> None:
    """The forkserver boots while the pipeline is still being built (its imports overlap the
    program's own work), and the run then uses it."""
    code = (
        "import sys\n"
        "from multiprocessing import forkserver\n"
        "import headrace as hr\n"
        "stream = hr.from_iterable(range(4)).map(abs, workers=2, backend='process')\n"
        "early = forkserver._forkserver._forkserver_pid\n"
        "assert early is not None, 'no forkserver after building the stage'\n"
        "assert stream.collect() == [0, 1, 2, 3]\n"
        "assert forkserver._forkserver._forkserver_pid == early\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "HEADRACE_START_METHOD"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_the_parent_keeps_a_task_array_only_in_its_slot(tmp_path: Path) -> None:
    """An array sent to a worker is held by the parent (to send it again if the worker dies)
    as a view of the shared-memory slot that carries it, not as a second copy: the source's
    own array is freed while its item runs."""
    import gc
    import time
    import weakref

    started = tmp_path / "started"
    made: list[weakref.ref[Any]] = []

    def source() -> Any:
        for i in range(3):
            a = np.full(2**18, i, np.float64)  # 2 MiB: through a slot
            made.append(weakref.ref(a))
            yield a

    def slow_first(a: np.ndarray[Any, Any]) -> float:
        if a[0] == 0:
            started.touch()
            time.sleep(1.5)
        return float(a.sum())

    with hr.from_iterable(source()).map(slow_first, workers=2, backend="process").open() as run:
        deadline = time.monotonic() + 20
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        gc.collect()
        alive_while_running = made[0]() is not None
        out = list(run)
    assert out == [float(i * 2**18) for i in range(3)]
    assert not alive_while_running


def test_a_dead_workers_arrays_go_again_from_their_slots(tmp_path: Path) -> None:
    crashed = tmp_path / "crashed"

    def crash_once(a: np.ndarray[Any, Any]) -> float:
        if a[0] == 3 and not crashed.exists():
            crashed.touch()
            os._exit(1)
        return float(a.sum())

    arrays = (np.full(2**18, i, np.float64) for i in range(8))
    out = hr.from_iterable(arrays).map(crash_once, retries=1, **PROC).collect()
    assert crashed.exists()
    assert out == [float(i * 2**18) for i in range(8)]


def passing(items: Any) -> Any:
    yield from items


@pytest.mark.parametrize("on_error", ["skip", "raise"])
def test_an_item_that_cannot_be_sent_to_a_transform(on_error: str) -> None:
    import threading

    stream = hr.from_iterable([1, 2, threading.Lock(), 4]).transform(
        passing, backend="process", on_error=on_error
    )
    if on_error == "raise":
        with pytest.raises(hr.SerializationError, match="could not be pickled"):
            stream.collect()
        return
    with stream.open() as run:
        out = list(run)
        report = run.report()
    assert out == [1, 2, 4]
    assert [e.type for e in report.errors] == ["SerializationError"]
