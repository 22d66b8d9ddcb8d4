"""One case in a fresh interpreter, in its own process session, killed afterwards.

The child (`_child`) runs in a new session (``start_new_session=True``), so that every process it
starts (pool workers, start-method servers, resource trackers) is found by its session id and
ended with it: after the child exits they get `GRACE_S` to go away by themselves (to remove what
they own, e.g. shared memory), then the child's process group is killed, and any member of the
session left outside that group is killed by pid. The child is reaped only after that, so its
pid, which names the group, cannot be reused meanwhile.

Memory: in a sampling run, the proportional set size (``Pss`` of ``/proc/PID/smaps_rollup``) of
every live process of the session is summed every `SAMPLE_S`; the peak is kept. Sampling slows
the measured code, so timing runs do not sample.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._child import MARK
from ._core import BACKEND_ENV

#: Seconds between two memory samples: a scan of /proc takes about 1 ms on a quiet machine.
SAMPLE_S = 0.01
#: Seconds the child's helpers get to exit by themselves after it ended.
GRACE_S = 2.0
POLL_S = 0.02
PROC = Path("/proc")
#: Longest temp dir path used as it is: leaves room for our dir, multiprocessing's and a socket.
MAX_TEMP_PATH = 50
#: The child's main program. Not ``-m benchmarks._child``: workers started by spawn or
#: forkserver import the main module again, and it should cost them nothing.
CHILD = "import sys; from benchmarks._child import main; sys.exit(main(sys.argv[1:]))"


@dataclass
class Outcome:
    status: str  # "ok", "skipped" or "failed"
    result: dict[str, Any] | None = None
    import_s: float | None = None
    error: str | None = None
    peak_pss: int | None = None  # bytes, whole session
    start_pss: int | None = None  # bytes, at the start of the case (imports done)
    wall_s: float = 0.0
    killed: list[str] = field(default_factory=list)  # helpers still alive after the grace


def _stat(pid: str) -> tuple[str, int] | None:
    """(state, session id) of a process, or None if it is gone."""
    try:
        with open(PROC / pid / "stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[3])


def session_members(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid``."""
    found = []
    for entry in os.scandir(PROC):
        if entry.name.isdigit() and (st := _stat(entry.name)) and st[1] == sid and st[0] != "Z":
            found.append(int(entry.name))
    return found


def _pss(pid: int) -> int:
    try:
        with open(PROC / str(pid) / "smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def session_pss(sid: int) -> int:
    return sum(_pss(pid) for pid in session_members(sid))


def _cmdline(pid: int) -> str:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:120]


def _parse(buffer: bytearray, events: list[dict[str, Any]]) -> None:
    """Move the complete lines of ``buffer`` that are meant for the harness into ``events``."""
    while (end := buffer.find(b"\n")) >= 0:
        line = bytes(buffer[:end]).decode(errors="replace")
        del buffer[: end + 1]
        if line.startswith(MARK):
            events.append(json.loads(line[len(MARK) :]))


def _read(fd: int, buffer: bytearray, events: list[dict[str, Any]]) -> bool:
    """Read what is there; return True at end of file."""
    try:
        chunk = os.read(fd, 1 << 16)
    except BlockingIOError:
        return False
    buffer += chunk
    _parse(buffer, events)
    return not chunk


def _exited(pid: int) -> bool:
    """Whether the child has exited, without reaping it."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _end_session(proc: subprocess.Popen[bytes], *, interrupt: bool) -> list[str]:
    """Give the session `GRACE_S` to end, kill what is left of it, reap the child.

    ``interrupt``: the child is still running (it timed out); Ctrl-C its process group first,
    so that the library under test can clean up before the kill.
    """
    sid = proc.pid
    if interrupt:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(sid, signal.SIGINT)
    deadline = time.monotonic() + GRACE_S
    # The child itself stays a zombie until reaped below: it counts as gone once it exited.
    left = [p for p in session_members(sid) if p != sid or not _exited(sid)]
    while left and time.monotonic() < deadline:
        time.sleep(POLL_S)
        left = [p for p in session_members(sid) if p != sid or not _exited(sid)]
    killed = [_cmdline(p) for p in left]
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(sid, signal.SIGKILL)  # the child's group: the child is not reaped yet
    for pid in session_members(sid):  # members that left the group but not the session
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    return killed


def _temp_base() -> str | None:
    """Where the children's temp dirs go: the temp dir, unless its path is too long.

    A forkserver's socket lives in the temp dir (``pymp-*/listener-*``), and a Unix socket's path
    has at most 107 bytes: past about 50, fall back to /tmp.
    """
    base = tempfile.gettempdir()
    if len(base) > MAX_TEMP_PATH and os.access("/tmp", os.W_OK):
        return "/tmp"
    return None


def run_child(
    root: Path,
    workload: str,
    key: str,
    params: dict[str, Any],
    *,
    backend: str,
    sample: bool,
    timeout: float,
) -> Outcome:
    """Run one case in a fresh interpreter and return what it reported."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    env[BACKEND_ENV] = backend
    command = [sys.executable, "-c", CHILD, workload, key, json.dumps(params)]
    with tempfile.TemporaryDirectory(prefix="headrace-bench-", dir=_temp_base()) as tmp:
        env["TMPDIR"] = tmp  # whatever the case leaves in the temp dir goes with it
        errors = Path(tmp) / "stderr.txt"
        started = time.monotonic()
        with open(errors, "wb") as err:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=tmp,
                env=env,
                start_new_session=True,
            )
        events: list[dict[str, Any]] = []
        peak = base = None
        timed_out = False
        try:
            timed_out, peak, base = _watch(proc, events, sample=sample, timeout=timeout)
        finally:
            killed = _end_session(proc, interrupt=timed_out)
        outcome = _outcome(events, errors, proc.returncode, timed_out, timeout)
        outcome.wall_s = time.monotonic() - started
    outcome.killed = killed
    outcome.peak_pss, outcome.start_pss = peak, base
    return outcome


def _watch(
    proc: subprocess.Popen[bytes], events: list[dict[str, Any]], *, sample: bool, timeout: float
) -> tuple[bool, int | None, int | None]:
    """Read the child's events (and sample its memory) until it exits or times out."""
    assert proc.stdout is not None
    out = proc.stdout.fileno()
    os.set_blocking(out, False)
    try:
        pidfd: int | None = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # no pidfd (Linux < 5.3): poll the child instead
        pidfd = None
    buffer = bytearray()
    eof = False
    peak = base = None
    deadline = time.monotonic() + timeout
    try:
        while True:
            wait = SAMPLE_S if sample else min(max(0.0, deadline - time.monotonic()), 1.0)
            if pidfd is None:
                wait = min(wait, POLL_S)
            fds = [fd for fd in (pidfd, None if eof else out) if fd is not None]
            if fds:
                ready = select.select(fds, [], [], wait)[0]
            else:
                time.sleep(wait)
                ready = []
            if out in ready:
                eof = _read(out, buffer, events)
            if sample:
                pss = session_pss(proc.pid)
                peak = max(peak or 0, pss)
                if base is None and any(e["event"] == "start" for e in events):
                    base = pss
            if (pidfd in ready) if pidfd is not None else _exited(proc.pid):
                while not eof and select.select([out], [], [], 0)[0]:
                    eof = _read(out, buffer, events)
                return False, peak, base
            if time.monotonic() > deadline:
                return True, peak, base
    finally:
        if pidfd is not None:
            os.close(pidfd)
        proc.stdout.close()


def _outcome(
    events: list[dict[str, Any]], errors: Path, code: int | None, timed_out: bool, timeout: float
) -> Outcome:
    by_kind = {e["event"]: e for e in events}
    if "skipped" in by_kind:
        return Outcome("skipped", error=by_kind["skipped"]["reason"])
    if "result" in by_kind and not timed_out:
        done = by_kind["result"]
        return Outcome("ok", result=done["result"], import_s=done["import_s"])
    if timed_out:
        error = f"timed out after {timeout:g} s"
    elif "error" in by_kind:
        error = by_kind["error"]["error"]
    else:
        tail = (
            errors.read_text(errors="replace").strip().splitlines()[-1:] if errors.exists() else []
        )
        error = f"exit code {code}" + (f": {tail[0][:300]}" if tail else "")
    return Outcome("failed", error=error)
