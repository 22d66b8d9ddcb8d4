"""Every exit of an `hr.ArrayJob` removes its segments and files: a normal exit, an exception in
a task, a worker SIGKILLed, Ctrl-C, and the whole job SIGKILLed (then the next job sweeps).

Each scenario runs in a child interpreter of its own session, with a deadline. A task signals
that it has started by creating a file, then waits; the test acts on that state, never on time.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

#: Hard deadline of one child interpreter, in seconds (a loaded 2-core machine needs seconds
#: to start an interpreter with NumPy, its forkserver and two workers).
DEADLINE_S = 50.0
SHM = Path("/dev/shm")

SCRIPT = """
import faulthandler, json, os, signal, sys, time
faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test asks for stacks on a hang
from pathlib import Path
import numpy as np
import headrace as hr

STARTED = Path(sys.argv[1])
FAULT = sys.argv[2]
STORAGE = sys.argv[3]

def task(i, arrays):
    arrays.P[i] = arrays.X[i].sum()
    if i == 3:
        STARTED.write_text(str(os.getpid()))
        if FAULT == "raise":
            raise ValueError("task failed on purpose")
        if FAULT == "kill-worker":
            os.kill(os.getpid(), signal.SIGKILL)
        if FAULT in ("ctrl-c", "kill-all"):
            while True:
                time.sleep(0.05)  # waits for the test's signal (not a synchronisation)
    return i

outcome = {"error": None}
try:
    with hr.ArrayJob(X=np.ones((8, 1000)), workers=2, backend="process", storage=STORAGE) as job:
        job.output("P", 8)
        print("READY", flush=True)
        job.map(task, range(8))
except BaseException as exc:
    outcome = {"error": type(exc).__name__, "notes": getattr(exc, "__notes__", [])}
print("RESULT " + json.dumps(outcome), flush=True)
"""

SWEEP = """
import numpy as np
import headrace as hr
with hr.ArrayJob(X=np.zeros(3), backend="process") as job:
    pass
"""


def _session_pids(sid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(entry.path, "stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def _left_by(pid: int) -> list[str]:
    """Segments and folders that the job owned by ``pid`` made and did not remove."""
    shm = [n for n in os.listdir(SHM) if n.startswith(f"hr-{pid}-")]
    tmp = [n for n in os.listdir(tempfile.gettempdir()) if n.startswith(f"headrace-{pid}-")]
    return shm + tmp


def _wait(predicate: object, what: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        if proc.poll() is not None and not predicate():  # type: ignore[operator]
            raise AssertionError(f"the job ended before {what}: {proc.communicate()}")
        time.sleep(0.02)


class Scenario:
    def __init__(self, fault: str, storage: str, tmp_path: Path) -> None:
        self.started = tmp_path / "started"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(self.started), fault, storage],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def finish(self) -> dict[str, object]:
        try:
            out, err = self.proc.communicate(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.kill(self.proc.pid, signal.SIGUSR1)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(2.0)
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            out, err = self.proc.communicate()
            raise AssertionError(f"the job hung; its stacks:\n{err[-6000:]}") from None
        lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
        assert lines, f"no result (rc {self.proc.returncode}): {err[-3000:]}"
        return json.loads(lines[-1][len("RESULT ") :])  # type: ignore[no-any-return]

    def assert_nothing_left(self) -> None:
        deadline = time.monotonic() + 2.0  # RELIABILITY: workers gone within 2 s
        while _session_pids(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        left = _session_pids(self.proc.pid)
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        assert not left, f"processes left: {left}"
        assert not _left_by(self.proc.pid)


STORAGES = ["shm", "file"]
#: Each test runs one or two child interpreters, each within DEADLINE_S.
pytestmark = pytest.mark.timeout(2 * DEADLINE_S + 20)


@pytest.mark.parametrize("storage", STORAGES)
def test_normal_exit_removes_everything(storage: str, tmp_path: Path) -> None:
    job = Scenario("none", storage, tmp_path)
    assert job.finish() == {"error": None}
    job.assert_nothing_left()


@pytest.mark.parametrize("storage", STORAGES)
def test_an_exception_in_a_task_names_it_and_removes_everything(
    storage: str, tmp_path: Path
) -> None:
    job = Scenario("raise", storage, tmp_path)
    result = job.finish()
    assert result["error"] == "ValueError"
    assert "headrace: in ArrayJob task 3" in result["notes"]  # type: ignore[operator]
    job.assert_nothing_left()


@pytest.mark.parametrize("storage", STORAGES)
def test_a_killed_worker_is_reported_and_everything_removed(storage: str, tmp_path: Path) -> None:
    job = Scenario("kill-worker", storage, tmp_path)
    result = job.finish()
    assert result["error"] == "WorkerCrashedError"
    assert "headrace: in ArrayJob task 3" in result["notes"]  # type: ignore[operator]
    job.assert_nothing_left()


@pytest.mark.parametrize("storage", STORAGES)
def test_ctrl_c_removes_everything(storage: str, tmp_path: Path) -> None:
    job = Scenario("ctrl-c", storage, tmp_path)
    _wait(job.started.exists, "the task to start", job.proc)
    assert _left_by(job.proc.pid), "the job should hold its arrays while it runs"
    os.killpg(job.proc.pid, signal.SIGINT)  # what a terminal does
    assert job.finish()["error"] == "KeyboardInterrupt"
    job.assert_nothing_left()


@pytest.mark.parametrize("storage", STORAGES)
def test_a_killed_job_is_swept_by_the_next_one(storage: str, tmp_path: Path) -> None:
    job = Scenario("kill-all", storage, tmp_path)
    _wait(job.started.exists, "the task to start", job.proc)
    os.killpg(job.proc.pid, signal.SIGKILL)  # every process of the job, resource tracker too
    job.proc.communicate(timeout=DEADLINE_S)
    deadline = time.monotonic() + 2.0
    while _session_pids(job.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _left_by(job.proc.pid), "a SIGKILLed job leaves its arrays (nothing ran to remove)"
    subprocess.run([sys.executable, "-c", SWEEP], check=True, timeout=DEADLINE_S)
    job.assert_nothing_left()
