"""The Ray engine (hr.RayEngine): faults, leaks and what differs from local processes.

The backend suite (tests/backends, its "ray" parameter) checks that pipelines behave the same
on Ray; this file checks what only Ray has: actors killed from outside, hung items, actors and
objects left after a run, the import guard. Every test runs on the session's local Ray
(``ray_session``, 2 CPUs).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import headrace as hr
from headrace._backends import _ray

pytestmark = pytest.mark.slow

N = 40


@pytest.fixture
def engine(ray_session: Any) -> hr.RayEngine:
    return hr.RayEngine()


def alive_actors(ray: Any) -> list[str]:
    from ray._private import state

    return [aid for aid, a in state.actors().items() if a.get("State") != "DEAD"]


def alive_actor_pids(ray: Any) -> set[int]:
    from ray._private import state

    return {int(a["Pid"]) for a in state.actors().values() if a.get("State") != "DEAD"}


def idle_actors() -> int:
    return len(_ray.IDLE)


def wait_only_idle_actors(ray: Any, timeout: float = 5.0) -> bool:
    """Whether, within ``timeout``, the only actors alive are those kept idle for a later run
    (an actor that held a call when its run closed must be dead)."""
    deadline = time.monotonic() + timeout
    while len(alive_actors(ray)) != idle_actors():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def wait_no_actors(ray: Any, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while (alive := alive_actors(ray)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


# --- the functions the actors run (module level: actors import this module) -------------------


def double(x: int) -> int:
    return 2 * x


def my_pid(x: int) -> tuple[int, int]:
    return x, os.getpid()


def crash_on_seven(x: int) -> int:
    if x == 7:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


class CrashOnceOnSeven:
    """Kills its actor's process the first time it sees item 7 (a marker file remembers)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __call__(self, x: int) -> int:
        if x == 7 and not os.path.exists(self.marker):
            Path(self.marker).write_text("crashed")
            os.kill(os.getpid(), signal.SIGKILL)
        return x


class PidFile:
    """Writes its actor's pid to a file, then takes its time over each item."""

    def __init__(self, folder: str) -> None:
        Path(folder, f"{os.getpid()}.pid").write_text("")

    def __call__(self, x: int) -> int:
        time.sleep(0.05)
        return x


def hang_on_three(x: int) -> int:
    if x == 3:
        time.sleep(60)
    return x


def slow(x: int) -> int:
    time.sleep(0.02)
    return x


def make_array(i: int) -> np.ndarray:
    return np.full(2**18, i, dtype=np.int64)  # 2 MiB: through the object store


class Counter:
    """A class callable: instantiated once per actor."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: int) -> tuple[int, int]:
        self.calls += 1
        return os.getpid(), self.calls


def draw(x: int) -> int:
    return int(hr.rng().integers(1_000_000))


# --- import and options ------------------------------------------------------------------------


def test_import_headrace_never_imports_ray() -> None:
    code = "import headrace, sys; assert 'ray' not in sys.modules, 'ray was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_missing_ray_is_one_line_naming_the_extra() -> None:
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "import headrace as hr\n"
        "try:\n    hr.RayEngine()\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.strip().count("\n") == 0
    assert 'pip install "headrace[ray]"' in out


def test_engine_must_be_a_ray_engine() -> None:
    with pytest.raises(ValueError, match="RayEngine"):
        hr.from_iterable([1]).collect(engine="ray")


# --- semantics ---------------------------------------------------------------------------------


def test_process_stages_run_in_actors_and_thread_stages_in_the_driver(
    engine: hr.RayEngine,
) -> None:
    s = (
        hr.from_iterable(range(N))
        .map(my_pid, backend="process", workers=2, name="remote")
        .map(lambda pair: (*pair, os.getpid()), backend="thread", workers=2, name="local")
    )
    with s.open(engine=engine) as run:
        out = list(run)
        report = run.report()
    assert [x for x, _, _ in out] == list(range(N))  # input order kept
    assert {local for _, _, local in out} == {os.getpid()}
    remote = {pid for _, pid, _ in out}
    assert os.getpid() not in remote and 1 <= len(remote) <= 2
    stages = {s.name: s for s in report.stages}
    assert stages["remote"].completed == N and stages["remote"].backend == "process"


def test_class_callable_is_instantiated_once_per_actor(engine: hr.RayEngine) -> None:
    out = (
        hr.from_iterable(range(N)).map(Counter, backend="process", workers=2).collect(engine=engine)
    )
    by_actor: dict[int, list[int]] = {}
    for pid, calls in out:
        by_actor.setdefault(pid, []).append(calls)
    assert 1 <= len(by_actor) <= 2
    for calls in by_actor.values():
        assert sorted(calls) == list(range(1, len(calls) + 1))  # one instance, counting on


def test_rng_draws_match_the_local_engine(engine: hr.RayEngine) -> None:
    s = hr.from_iterable(range(N)).map(draw, backend="process", workers=2)
    assert s.collect(engine=engine, seed=11) == s.collect(seed=11)


def test_arrays_come_back_through_the_object_store(engine: hr.RayEngine) -> None:
    out = (
        hr.from_iterable(range(6))
        .map(make_array, backend="process", workers=2)
        .collect(engine=engine)
    )
    assert [int(a[0]) for a in out] == list(range(6))
    assert all(a.shape == (2**18,) and int(a[-1]) == i for i, a in enumerate(out))
    assert not out[0].flags.writeable  # a zero-copy view of the object store


def test_stream_stages_run_in_actors(engine: hr.RayEngine) -> None:
    def pairs(items: Any) -> Any:
        buf = []
        for x in items:
            buf.append(x)
            if len(buf) == 2:
                yield (*buf, os.getpid())
                buf = []

    s = hr.from_iterable(range(6)).transform(pairs, backend="process")
    out = s.collect(engine=engine)
    assert [(a, b) for a, b, _ in out] == [(0, 1), (2, 3), (4, 5)]
    pids = {pid for _, _, pid in out}
    assert len(pids) == 1 and os.getpid() not in pids
    assert "ray::" in Path(f"/proc/{pids.pop()}/cmdline").read_text()  # a Ray actor's process


def running_draws(items: Any) -> Any:
    total = 0
    for x in items:
        total += int(hr.rng().integers(1000))
        yield x, total


def test_stream_stage_matches_the_local_engine(engine: hr.RayEngine) -> None:
    """Order (one worker), outputs and `hr.rng()` draws: as on local worker processes."""
    s = hr.from_iterable(range(500)).transform(running_draws, backend="process")
    assert s.collect(engine=engine, seed=5) == s.collect(seed=5)


def skip_seven(items: Any) -> Any:
    for x in items:
        if x == 7:
            raise KeyError(x)
        yield x


def test_stream_stage_error_is_skipped_and_the_function_restarts(engine: hr.RayEngine) -> None:
    s = hr.from_iterable(range(20)).transform(skip_seven, backend="process", on_error="skip")
    with s.open(engine=engine) as run:
        out = list(run)
        errors = run.report().errors
    assert out == [x for x in range(20) if x != 7]
    assert [e.type for e in errors] == ["KeyError"]
    assert "skip_seven" in errors[0].traceback  # the actor's traceback
    for st in run.report().stages:
        assert st.items_in == st.completed + st.dropped + st.errors + st.cancelled


def kill_on_seven(items: Any) -> Any:
    for x in items:
        if x == 7:
            os.kill(os.getpid(), signal.SIGKILL)
        yield x


def test_a_stream_actor_that_dies_fails_the_run_even_under_skip(engine: hr.RayEngine) -> None:
    s = hr.from_iterable(range(N)).transform(kill_on_seven, backend="process", on_error="skip")
    started = time.monotonic()
    with pytest.raises(hr.WorkerCrashedError, match="Ray actor"):
        s.collect(engine=engine)
    assert time.monotonic() - started < 30  # never a hang


def lock_at_five(items: Any) -> Any:
    for x in items:
        yield threading.Lock() if x == 5 else x


def test_a_stream_output_that_cannot_travel_fails_only_itself(engine: hr.RayEngine) -> None:
    s = hr.from_iterable(range(20)).transform(lock_at_five, backend="process", on_error="skip")
    with s.open(engine=engine) as run:
        out = list(run)
        errors = run.report().errors
    assert out == [x for x in range(20) if x != 5]  # as on local worker processes
    assert [e.type for e in errors] == ["TypeError"]
    raising = hr.from_iterable(range(20)).transform(lock_at_five, backend="process")
    with pytest.raises(TypeError, match="pickle"):
        raising.collect(engine=engine)


def test_a_stream_input_that_cannot_travel_fails_only_itself(engine: hr.RayEngine) -> None:
    items = [1, 2, threading.Lock(), 4]
    s = hr.from_iterable(items).transform(pass_through, backend="process", on_error="skip")
    with s.open(engine=engine) as run:
        out = list(run)
        errors = run.report().errors
    assert out == [1, 2, 4]
    assert [e.type for e in errors] == ["SerializationError"]
    assert "item 2 could not be sent" in errors[0].message


def pass_through(items: Any) -> Any:
    yield from items


def slow_stream(items: Any) -> Any:
    for x in items:
        time.sleep(0.02)
        yield x


def test_an_early_break_kills_a_stream_actor(engine: hr.RayEngine, ray_session: Any) -> None:
    engine.shutdown()  # no idle actors of earlier tests
    s = hr.from_iterable(range(10_000)).transform(slow_stream, backend="process", workers=2)
    with s.open(engine=engine) as run:
        for x in run:
            if x >= 3:
                break
        assert alive_actors(ray_session)  # the actors were running
    assert wait_only_idle_actors(ray_session)  # the actors that held input are dead


def test_ctrl_c_kills_a_stream_actor(engine: hr.RayEngine, ray_session: Any) -> None:
    engine.shutdown()  # no idle actors of earlier tests
    s = hr.from_iterable(range(10_000)).transform(slow_stream, backend="process")
    with pytest.raises(KeyboardInterrupt), s.open(engine=engine) as run:
        for x in run:
            if x == 3:
                raise KeyboardInterrupt
    assert wait_only_idle_actors(ray_session)  # the actor that held input is dead
    assert idle_actors() == 0


def test_a_finished_stream_run_keeps_its_actor_for_the_next(
    engine: hr.RayEngine, ray_session: Any
) -> None:
    engine.shutdown()
    s = hr.from_iterable(range(N)).transform(pid_stream, backend="process")
    first = set(s.collect(engine=engine))
    assert idle_actors() == 1
    assert set(s.collect(engine=engine)) == first  # the same actor, no start-up
    # A call stage never takes a stream stage's actor (it runs calls one at a time).
    assert {
        pid
        for _, pid in hr.from_iterable(range(4))
        .map(my_pid, backend="process")
        .collect(engine=engine)
    }.isdisjoint(first)
    engine.shutdown()
    assert wait_no_actors(ray_session) == []


def pid_stream(items: Any) -> Any:
    for _ in items:
        yield os.getpid()


# --- logs --------------------------------------------------------------------------------------


def log_item(x: int) -> int:
    logging.getLogger("headrace_test.user").warning("call on item %d", x)
    return x


def log_stream(items: Any) -> Any:
    for x in items:
        logging.getLogger("headrace_test.user").warning("stream on item %d", x)
        yield x


def test_actors_log_records_reach_the_driver_handlers(
    engine: hr.RayEngine, caplog: pytest.LogCaptureFixture
) -> None:
    s = (
        hr.from_iterable(range(4))
        .map(log_item, backend="process", workers=2, name="calls")
        .transform(log_stream, backend="process", name="streams")
    )
    with caplog.at_level(logging.WARNING, logger="headrace_test"):
        assert s.collect(engine=engine) == list(range(4))
    records = [r for r in caplog.records if r.name == "headrace_test.user"]
    by_stage = {
        stage: sorted(r.getMessage() for r in records if getattr(r, "headrace_stage", "") == stage)
        for stage in ("calls", "streams")
    }
    assert by_stage == {
        "calls": [f"call on item {i}" for i in range(4)],
        "streams": [f"stream on item {i}" for i in range(4)],
    }
    for r in records:
        assert r.processName.startswith(f"{r.headrace_stage}/worker-")
        assert r.headrace_worker != os.getpid()  # the actor's process


# --- per-stage resources ----------------------------------------------------------------------


def assigned(x: int) -> dict[str, float]:
    import ray

    return dict(ray.get_runtime_context().get_assigned_resources())


def assigned_stream(items: Any) -> Any:
    import ray

    for _ in items:
        yield dict(ray.get_runtime_context().get_assigned_resources())


def test_an_actor_gets_the_resources_of_its_stage(ray_session: Any) -> None:
    engine = hr.RayEngine(
        actor_options={"calls": {"num_cpus": 0.5, "resources": {"headrace_test": 1}}}
    )
    s = (
        hr.from_iterable(range(4))
        .map(assigned, backend="process", workers=2, name="calls")
        .map(lambda got: (got, assigned(0)), backend="process", name="plain")
    )
    out = s.collect(engine=engine)
    assert all(got == {"CPU": 0.5, "headrace_test": 1.0} for got, _ in out), out
    assert all(plain == {} for _, plain in out)  # Ray's defaults: nothing held
    streams = hr.from_iterable(range(2)).transform(
        assigned_stream, backend="process", name="streams"
    )
    engine = hr.RayEngine(actor_options={"streams": {"resources": {"headrace_test": 2}}})
    # Without num_cpus an actor that asks for resources holds 1 CPU (Ray's rule).
    assert streams.collect(engine=engine) == [{"CPU": 1.0, "headrace_test": 2.0}] * 2
    engine.shutdown()  # the idle actors hold resources


def test_an_idle_actor_holding_resources_makes_way(ray_session: Any) -> None:
    """A finished run's actor holds its resources while idle: a stage that needs them (made
    with other options) ends it instead of waiting for it to exit (60 s)."""
    first = hr.RayEngine(actor_options={"calls": {"resources": {"headrace_test": 3}}})
    second = hr.RayEngine(actor_options={"calls": {"resources": {"headrace_test": 2}}})
    s = hr.from_iterable(range(4)).map(assigned, backend="process", name="calls")
    started = time.monotonic()
    assert s.collect(engine=first)[0]["headrace_test"] == 3.0
    assert idle_actors() == 1  # kept, holding 3 of the cluster's 4
    assert s.collect(engine=second)[0]["headrace_test"] == 2.0
    assert time.monotonic() - started < 30
    second.shutdown()


def test_resources_are_checked_when_given_and_when_the_run_starts(ray_session: Any) -> None:
    with pytest.raises(ValueError, match=r"unknown key 'num_gpu'.*num_gpus"):
        hr.RayEngine(actor_options={"embed": {"num_gpu": 1}})
    with pytest.raises(TypeError, match="number >= 0"):
        hr.RayEngine(actor_options={"embed": {"num_gpus": -1}})
    s = hr.from_iterable(range(4)).map(double, backend="process", name="embed")
    misspelt = hr.RayEngine(actor_options={"embd": {"num_gpus": 1}})
    with pytest.raises(ValueError, match=r"'embd'.*process stages are 'embed'"):
        s.collect(engine=misspelt)
    started = time.monotonic()
    too_much = hr.RayEngine(actor_options={"embed": {"resources": {"headrace_test": 5}}})
    with pytest.raises(ValueError, match=r"stage 'embed'.*can hold 0"):
        s.collect(engine=too_much)  # at once: Ray would leave the actor pending for ever
    two = hr.RayEngine(actor_options={"embed": {"resources": {"headrace_test": 3}}})
    with pytest.raises(ValueError, match="can hold 1"):
        hr.from_iterable(range(4)).map(double, backend="process", workers=2, name="embed").collect(
            engine=two
        )
    assert time.monotonic() - started < 10


# --- faults ------------------------------------------------------------------------------------


def test_an_actor_killed_by_its_item_is_a_worker_crash(engine: hr.RayEngine) -> None:
    s = hr.from_iterable(range(N)).map(crash_on_seven, backend="process", workers=2)
    started = time.monotonic()
    with pytest.raises(hr.WorkerCrashedError) as info:
        s.collect(engine=engine)
    assert info.value.index == 7
    assert time.monotonic() - started < 30  # never a hang


def test_a_crashed_item_is_skipped_and_the_rest_run_again(engine: hr.RayEngine) -> None:
    s = hr.from_iterable(range(N)).map(
        crash_on_seven, backend="process", workers=2, on_error="skip"
    )
    with s.open(engine=engine) as run:
        out = list(run)
        errors = run.report().errors
    assert out == [x for x in range(N) if x != 7]
    assert [(e.index, e.type) for e in errors] == [(7, "WorkerCrashedError")]


def test_a_crashed_item_is_retried_on_a_fresh_actor(engine: hr.RayEngine, tmp_path: Path) -> None:
    fn = CrashOnceOnSeven(str(tmp_path / "crashed"))
    out = (
        hr.from_iterable(range(N))
        .map(fn, backend="process", workers=2, retries=1)
        .collect(engine=engine)
    )
    assert out == list(range(N))
    assert (tmp_path / "crashed").exists()


def test_an_actor_killed_from_outside_mid_run_is_replaced(
    engine: hr.RayEngine, tmp_path: Path
) -> None:
    folder = str(tmp_path)

    class Slow(PidFile):
        def __init__(self) -> None:
            super().__init__(folder)

    s = hr.from_iterable(range(N)).map(Slow, backend="process", workers=2, retries=2)
    with s.open(engine=engine) as run:
        out = [next(run)]
        pids = [int(p.stem) for p in tmp_path.glob("*.pid")]
        assert pids
        os.kill(pids[0], signal.SIGKILL)
        out.extend(run)
    assert out == list(range(N))


def test_a_hung_item_times_out_and_its_actor_is_replaced(engine: hr.RayEngine) -> None:
    s = hr.from_iterable(range(8)).map(
        hang_on_three, backend="process", workers=2, timeout=1.0, on_error="skip"
    )
    started = time.monotonic()
    with s.open(engine=engine) as run:
        out = list(run)
        errors = run.report().errors
    assert time.monotonic() - started < 30
    assert out == [0, 1, 2, 4, 5, 6, 7]
    assert [(e.index, e.type) for e in errors] == [(3, "StageTimeoutError")]


def test_a_hung_item_raises_a_timeout(engine: hr.RayEngine) -> None:
    s = hr.from_iterable(range(8)).map(hang_on_three, backend="process", workers=2, timeout=1.0)
    with pytest.raises(hr.StageTimeoutError):
        s.collect(engine=engine)


# --- nothing left behind -----------------------------------------------------------------------


def test_an_early_break_kills_the_actors(engine: hr.RayEngine, ray_session: Any) -> None:
    engine.shutdown()  # no idle actors of earlier tests
    s = hr.from_iterable(range(10_000)).map(slow, backend="process", workers=2)
    with s.open(engine=engine) as run:
        for x in run:
            if x == 3:
                break
        assert alive_actors(ray_session)  # the actors were running
    assert wait_only_idle_actors(ray_session)  # the actors that held calls are dead


def test_ctrl_c_in_the_consumer_kills_the_actors(engine: hr.RayEngine, ray_session: Any) -> None:
    engine.shutdown()  # no idle actors of earlier tests
    s = hr.from_iterable(range(10_000)).map(slow, backend="process", workers=2)
    with pytest.raises(KeyboardInterrupt), s.open(engine=engine) as run:
        for x in run:
            if x == 3:
                raise KeyboardInterrupt
    assert wait_only_idle_actors(ray_session)  # the actors that held calls are dead


def test_a_finished_run_keeps_its_actors_idle_for_the_next_run(
    engine: hr.RayEngine, ray_session: Any
) -> None:
    engine.shutdown()  # no idle actors of earlier tests
    assert wait_no_actors(ray_session) == []
    s = hr.from_iterable(range(N)).map(my_pid, backend="process", workers=2)
    first = {pid for _, pid in s.collect(engine=engine)}
    assert idle_actors() == 2  # idle, kept for the next run...
    assert wait_only_idle_actors(ray_session)  # ...and alive (Ray's state may lag a little)
    kept = _ray.IDLE.ids()
    pids = alive_actor_pids(ray_session)
    second = {pid for _, pid in s.collect(engine=engine)}
    assert _ray.IDLE.ids() == kept  # the same actors ran it (no start-up), and are kept again
    # In their processes: either may have run every item of a run (one chunk), or none.
    assert first | second <= pids, (first, second, pids)
    engine.shutdown()
    assert wait_no_actors(ray_session) == []


def test_the_actors_of_a_failed_run_are_not_kept(engine: hr.RayEngine, ray_session: Any) -> None:
    engine.shutdown()  # no idle actors of earlier tests
    s = hr.from_iterable(range(N)).map(crash_on_seven, backend="process", workers=2)
    with pytest.raises(hr.WorkerCrashedError):
        s.collect(engine=engine)
    assert wait_only_idle_actors(ray_session)  # the actors that held calls are dead


def test_a_finished_run_leaves_no_objects(engine: hr.RayEngine, ray_session: Any) -> None:
    worker = ray_session._private.worker.global_worker
    before = set(worker.core_worker.get_all_reference_counts())
    out = (
        hr.from_iterable(range(6))
        .map(make_array, backend="process", workers=2)
        .collect(engine=engine)
    )
    assert len(out) == 6
    del out
    gc.collect()
    engine.shutdown()  # ends the idle actors (the session's Ray was not started by the engine)
    assert wait_no_actors(ray_session) == []
    assert ray_session.is_initialized()
    deadline = time.monotonic() + 5
    while (left := set(worker.core_worker.get_all_reference_counts()) - before) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.05)
        gc.collect()
    assert not left, f"object references left: {left}"
