"""Runs a file job in a child interpreter with a deadline, for the crash tests.

The child's processes carry a marker in their environment, so a test can check that none of
them outlives the child (also those orphaned by a SIGKILLed parent).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

#: Hard deadline of one child interpreter, in seconds.
DEADLINE_S = 40.0
MARK = "HEADRACE_FAULT_MARK"


def marked_pids(mark: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            environ = Path(entry.path, "environ").read_bytes()
            state = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if f"{MARK}={mark}".encode() in environ and state != "Z":
            found.append(int(entry.name))
    return found


def wait_gone(mark: str, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = marked_pids(mark)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.02)


def kill_marked(mark: str) -> None:
    for pid in marked_pids(mark):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _env(mark: str) -> dict[str, str]:
    return dict(os.environ, **{MARK: mark})


def run_child(code: str) -> list[dict[str, Any]]:
    """Run ``code`` (which sets ``results`` from a job's run) and return the results as dicts."""
    mark = uuid.uuid4().hex
    script = textwrap.dedent(code) + textwrap.dedent(
        """
        import json as _json
        print("RESULTS " + _json.dumps([
            {"input": r.input, "status": r.status, "meta": r.meta,
             "error": None if r.error is None else r.error.type,
             "error_index": None if r.error is None else r.error.index,
             "error_message": None if r.error is None else r.error.message}
            for r in results
        ]), flush=True)
        """
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=DEADLINE_S,
            env=_env(mark),
        )
    finally:
        left = wait_gone(mark, 2.0)
        kill_marked(mark)
    assert not left, f"processes outlived the child: {left}"
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS ")]
    assert lines, f"no results (rc {proc.returncode}); stderr:\n{proc.stderr[-3000:]}"
    results: list[dict[str, Any]] = json.loads(lines[-1][len("RESULTS ") :])
    return results


def start_child(code: str, mark: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(mark),
    )
