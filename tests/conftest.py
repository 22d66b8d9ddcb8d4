"""Leak checks run around every test under ``tests/`` (RELIABILITY.md, guarantee 4).

An autouse fixture fails a test that leaves behind any of: threads, child processes (and their
descendants), ``/dev/shm`` entries, or ``headrace*`` / ``tmp*`` entries in the temp dir. After
the test it allows ``GRACE_S`` for things to go away, then reports what is still there.

The session gets a private temp dir (``TMPDIR`` and ``tempfile.tempdir``; child processes inherit
it) so that files other programs on this machine create in ``/tmp`` are never taken for leaks.
``/dev/shm`` cannot be redirected, so a new entry counts only when it is ours: a headrace segment
(``hr-<owner pid>-...``) whose owner is this process, one of its descendants, or a process that
died during the test (another program's segment whose owner died in those same seconds is the one
case that could be misread), or any other new entry whose name says it comes from this process.

Ray (the tests of the Ray engine): one local Ray per session (the ``ray_session`` fixture, used
only by those tests). Its own long-lived processes (raylet, GCS, its agents, its pooled worker
processes) are not the test's: they are left out of the process check. What a run must not
leave is an actor: any actor alive after a test that was not before it is a leak, except the
actors the Ray engine keeps idle for a later run (they are reused by the next test's runs,
which keeps the Ray tests fast; a test that counts actors ends them first).

Hangs: pytest-timeout fails a test after ``timeout`` seconds and faulthandler dumps every
thread's stack after ``faulthandler_timeout`` (both set in pyproject.toml).
"""

from __future__ import annotations

import contextlib
import multiprocessing.util
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

#: Seconds a test's threads, processes and files get to go away after it ends. RELIABILITY.md
#: promises one second after close; twice that absorbs a loaded CI machine.
GRACE_S = 2.0
#: Seconds between two looks during the grace period.
POLL_S = 0.02

#: Processes that a start method or the standard library keeps for the program's lifetime
#: (RELIABILITY.md allows them): children of this process whose /proc/PID/cmdline holds one of
#: these. Their own children (the workers a forkserver forks) are checked like any other.
LONG_LIVED_HELPERS = ("forkserver", "resource_tracker")

SHM_DIR = Path("/dev/shm")
PROC_DIR = Path("/proc")

# A private temp dir for the session. pytest's own tmp_path stays under the system temp dir.
_SYSTEM_TMP = tempfile.gettempdir()
os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", _SYSTEM_TMP)
SESSION_TMP = tempfile.mkdtemp(prefix="headrace-tests-", dir=_SYSTEM_TMP)
os.environ["TMPDIR"] = SESSION_TMP
tempfile.tempdir = SESSION_TMP


# Removed at exit after multiprocessing's own clean-up (its finalizers run by descending
# priority; the one that removes its `pymp-*` dir from our temp dir has priority -100).
multiprocessing.util.Finalize(
    None, shutil.rmtree, args=(SESSION_TMP,), kwargs={"ignore_errors": True}, exitpriority=-1000
)


# ---------------------------------------------------------------------------------------------
# What exists now


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    start: int  # start time in clock ticks since boot: (pid, start) survives pid reuse
    state: str
    cmdline: str

    @property
    def key(self) -> tuple[int, int]:
        return (self.pid, self.start)


def _read_proc(pid: int) -> Proc | None:
    try:
        stat = (PROC_DIR / str(pid) / "stat").read_text(errors="replace")
        raw = (PROC_DIR / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None  # gone meanwhile
    # The command name (field 2) is in parentheses and may itself hold spaces or ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    cmdline = raw.replace(b"\0", b" ").decode(errors="replace").strip()
    return Proc(pid, int(fields[1]), int(fields[19]), fields[0], cmdline)


#: Markers in the command line of Ray's own processes (the raylet, GCS, agents, the worker
#: processes it pools: "ray::IDLE", "ray::StageActor" while an actor). Left out while Ray is up.
RAY_PROCESSES = ("ray::", "/ray/", "raylet", "gcs_server")
#: Names of the threads a Ray session keeps in its driver (started with the session, which a
#: test may start on first use). Left out while Ray is up.
RAY_THREADS = ("ray_", "PythonGCThread")


def _ray() -> Any:
    """The ray module when a Ray session is up in this process, else None."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return ray


def _ray_actors() -> set[str]:
    """The ids of the actors not yet dead in the Ray session of this process."""
    ray = _ray()
    if ray is None:
        return set()
    from ray._private import state

    idle = set()
    backend = sys.modules.get("headrace._backends._ray")
    if backend is not None:
        idle = backend.IDLE.ids()
    return {
        aid for aid, a in state.actors().items() if a.get("State") != "DEAD" and aid not in idle
    }


def _descendants() -> list[Proc]:
    """Every live process below this one, except the long-lived helpers themselves (and,
    while Ray is up, Ray's own processes)."""
    if not PROC_DIR.is_dir():
        return []
    procs = [p for e in os.scandir(PROC_DIR) if e.name.isdigit() and (p := _read_proc(int(e.name)))]
    children: dict[int, list[Proc]] = {}
    for p in procs:
        children.setdefault(p.ppid, []).append(p)
    me = os.getpid()
    found: list[Proc] = []
    todo = [me]
    ray_up = _ray() is not None
    while todo:
        for p in children.get(todo.pop(), []):
            if ray_up and any(m in p.cmdline for m in RAY_PROCESSES):
                continue
            todo.append(p.pid)
            if not (p.ppid == me and any(h in p.cmdline for h in LONG_LIVED_HELPERS)):
                found.append(p)
    return found


def _shm_entries() -> set[str]:
    try:
        return set(os.listdir(SHM_DIR))
    except OSError:
        return set()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ours(names: set[str]) -> set[str]:
    """The entries among ``names`` that this test session made (see the module docstring)."""
    mine = {os.getpid()} | {p.pid for p in _descendants()}
    found = set()
    for name in names:
        parts = name.split("-")
        if len(parts) >= 3 and parts[0] == "hr" and parts[1].isdigit():
            owner = int(parts[1])
            if owner in mine or not _pid_alive(owner):
                found.add(name)
        elif str(os.getpid()) in parts:
            found.add(name)
    return found


def _temp_entries() -> set[str]:
    try:
        names = os.listdir(tempfile.gettempdir())
    except OSError:
        return set()
    # This process's multiprocessing temp folder (headrace's ``-mp-`` one, holding pymp-*)
    # lasts as long as the program, like the forkserver whose socket it holds.
    own = f"headrace-{os.getpid()}-mp-"
    return {
        n
        for n in names
        if n.startswith(("headrace", "tmp")) and not n.startswith(("pytest-of-", own))
    }


@dataclass
class Snapshot:
    threads: set[threading.Thread]
    procs: set[tuple[int, int]]
    shm: set[str]
    temp: set[str]
    actors: set[str]

    @classmethod
    def take(cls) -> Snapshot:
        return cls(
            set(threading.enumerate()),
            {p.key for p in _descendants()},
            _shm_entries(),
            _temp_entries(),
            _ray_actors(),
        )


@dataclass
class Leaks:
    threads: list[threading.Thread]
    procs: list[Proc]
    shm: list[str]
    temp: list[str]
    actors: list[str]

    def __bool__(self) -> bool:
        return bool(self.threads or self.procs or self.shm or self.temp or self.actors)

    @classmethod
    def since(cls, before: Snapshot) -> Leaks:
        ray_up = _ray() is not None
        return cls(
            [
                t
                for t in threading.enumerate()
                if t not in before.threads
                and t.is_alive()
                and not (ray_up and t.name.startswith(RAY_THREADS))
            ],
            [p for p in _descendants() if p.key not in before.procs],
            sorted(_ours(_shm_entries() - before.shm)),
            sorted(_temp_entries() - before.temp),
            sorted(_ray_actors() - before.actors),
        )

    def describe(self) -> str:
        lines = [f"the test left these behind ({GRACE_S:g} s after it ended):"]
        frames = sys._current_frames()
        for t in self.threads:
            where = ""
            frame = frames.get(t.ident) if t.ident is not None else None
            if frame is not None:
                last = traceback.extract_stack(frame)[-2:]
                where = " at " + " <- ".join(
                    f"{Path(f.filename).name}:{f.lineno} in {f.name}" for f in reversed(last)
                )
            daemon = "daemon " if t.daemon else ""
            lines.append(f"  thread: {t.name!r} ({daemon}ident {t.ident}){where}")
        for p in self.procs:
            lines.append(
                f"  process: pid {p.pid} (parent {p.ppid}, state {p.state}): {p.cmdline[:200]}"
            )
        for name in self.shm:
            lines.append(f"  shared memory: {SHM_DIR / name}")
        for name in self.temp:
            lines.append(f"  temp entry: {Path(tempfile.gettempdir()) / name}")
        for actor in self.actors:
            lines.append(f"  Ray actor alive: {actor}")
        return "\n".join(lines)


def _kill(procs: list[Proc]) -> None:
    """Stop leaked processes so that they cannot disturb the tests that follow."""
    for p in procs:
        with contextlib.suppress(OSError):
            os.kill(p.pid, signal.SIGKILL)
    for p in procs:
        if p.ppid == os.getpid():
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(p.pid, 0)


# ---------------------------------------------------------------------------------------------
# The fixture


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail the test if it leaves threads, processes, shared memory or temp entries behind."""
    before = Snapshot.take()
    yield
    # Idle workers kept for a later run are not a leak of the test, but they would count as
    # one: end them (they end the same way at interpreter exit).
    process = sys.modules.get("headrace._backends._process")
    if process is not None:
        process.release_warm()
    deadline = time.monotonic() + GRACE_S
    leaks = Leaks.since(before)
    while leaks and time.monotonic() < deadline:
        time.sleep(POLL_S)
        leaks = Leaks.since(before)
    if leaks:
        message = leaks.describe()
        _kill(leaks.procs)
        pytest.fail(message, pytrace=False)


# ---------------------------------------------------------------------------------------------
# Ray


def _uses_ray(item: pytest.Item) -> bool:
    if "ray_session" in getattr(item, "fixturenames", ()):
        return True
    callspec = getattr(item, "callspec", None)
    opts = callspec.params.get("opts") if callspec is not None else None
    return isinstance(opts, dict) and opts.get("engine") == "ray"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The Ray tests run last: the session's Ray (its raylet, GCS and idle workers) stays up
    until the session ends, and must not slow the timing-sensitive tests of other modules."""
    items.sort(key=_uses_ray)  # stable: each group keeps its order


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    """One local Ray (2 CPUs, no dashboard) for the session's Ray tests; shut down at its end.
    Skips the test when Ray is not installed."""
    ray = pytest.importorskip("ray")
    # Actors import the test modules that define their functions, as worker processes do:
    # Ray's processes (started now) inherit the test directories that pytest put on sys.path.
    root = str(Path(__file__).resolve().parents[1])
    paths = [p for p in sys.path if p and p.startswith(root) and os.path.isdir(p)]
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([*paths, *([saved] if saved else [])])
    try:
        _init_ray(ray)
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    try:
        yield ray
    finally:
        ray.shutdown()


def _init_ray(ray: Any) -> None:
    ray.init(
        num_cpus=2,
        # A custom resource the tests of per-stage resources ask for (RayEngine(actor_options)).
        resources={"headrace_test": 4},
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
