"""Runs one fault scenario in a fresh interpreter with a hard deadline, and reports.

A test hands `run_scenario` the code that builds ``stream`` (and may set ``options``); this
module wraps it in a script that runs the stream, catches what it raises, and prints one JSON
line: the items, the error (type, message, notes, cause, crash fields), seconds to the error,
and every stage's figures for the conservation check. The scenario's processes carry a marker
in their environment, so that the test can find any of them still alive afterwards, also
those the scenario's interpreter orphaned.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Hard deadline of one scenario's interpreter, in seconds.
DEADLINE_S = 40.0
MARK = "HEADRACE_FAULT_MARK"

PRELUDE = """
import json, os, signal, sys, time
import numpy as np
import headrace as hr

options = {}
"""

RUNNER = """
def _describe(exc):
    if exc is None:
        return None
    cause = exc.__cause__
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "notes": list(getattr(exc, "__notes__", [])),
        "cause": type(cause).__name__ if cause is not None else None,
        "cause_text": str(cause) if cause is not None else "",
        "stage": getattr(exc, "stage", None),
        "index": getattr(exc, "index", None),
        "exitcode": getattr(exc, "exitcode", None),
        "worker": getattr(exc, "worker", None),
        "type_name": getattr(exc, "type_name", None),
    }

_out, _error, _run = [], None, None
_t0 = time.monotonic()
try:
    _run = stream.open(**options)
    with _run:
        for _item in _run:
            _out.append(_item if isinstance(_item, (int, float, str, type(None))) else repr(_item))
except BaseException as _exc:
    _error = _exc
_elapsed = time.monotonic() - _t0
_stages = []
if _run is not None:
    _report = _run.report()
    _stages = [
        {k: getattr(s, k) for k in ("name", "items_in", "completed", "dropped", "errors",
                                    "cancelled")}
        for s in _report.stages
    ]
    _errors = [(e.stage, e.index, e.type) for e in _report.errors]
else:
    _errors = []
print("RESULT " + json.dumps({"out": _out, "error": _describe(_error), "elapsed": _elapsed,
                              "stages": _stages, "errors": _errors}), flush=True)
"""


@dataclass
class Outcome:
    returncode: int
    result: dict[str, Any]
    stdout: str
    stderr: str
    leftovers: list[int]

    @property
    def error(self) -> dict[str, Any] | None:
        error: dict[str, Any] | None = self.result.get("error")
        return error

    @property
    def out(self) -> list[Any]:
        out: list[Any] = self.result["out"]
        return out

    def stage(self, name: str) -> dict[str, Any]:
        for s in self.result["stages"]:
            if s["name"] == name:
                return dict(s)
        raise KeyError(name)

    def assert_conserved(self, *, full: bool = False) -> None:
        """N_in == ok + errors + dropped + cancelled, on every stage."""
        assert self.result["stages"], "no report"
        for s in self.result["stages"]:
            total = s["completed"] + s["dropped"] + s["errors"] + s["cancelled"]
            assert s["items_in"] == total, f"stage {s['name']}: {s}"
            if full:
                assert s["cancelled"] == 0, f"stage {s['name']}: {s}"


def script(body: str) -> str:
    return PRELUDE + textwrap.dedent(body) + RUNNER


def marked_pids(mark: str) -> list[int]:
    """Live processes whose environment holds ``mark`` (zombies are dead and do not count)."""
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


def end_scenario(proc: subprocess.Popen[str], mark: str) -> None:
    """Kill what a scenario started (it may have failed half-way) and reap its program."""
    kill_marked(mark)
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def environment(mark: str, start_method: str) -> dict[str, str]:
    env = dict(os.environ, **{MARK: mark, "HEADRACE_START_METHOD": start_method})
    return env


def run_scenario(body: str, *, start_method: str = "forkserver", gone_s: float = 2.0) -> Outcome:
    """Run ``body`` (code that sets ``stream`` and maybe ``options``) and report."""
    mark = uuid.uuid4().hex
    try:
        proc = subprocess.run(
            [sys.executable, "-c", script(body)],
            capture_output=True,
            text=True,
            timeout=DEADLINE_S,
            env=environment(mark, start_method),
        )
    except subprocess.TimeoutExpired as exc:
        kill_marked(mark)
        raise AssertionError(f"the scenario hung (> {DEADLINE_S} s): {exc.stderr!r}") from None
    leftovers = wait_gone(mark, gone_s)
    kill_marked(mark)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no result (rc {proc.returncode}); stderr:\n{proc.stderr[-3000:]}"
    result = json.loads(lines[-1][len("RESULT ") :])
    return Outcome(proc.returncode, result, proc.stdout, proc.stderr, leftovers)


def start_scenario(code: str, mark: str, start_method: str = "forkserver") -> subprocess.Popen[str]:
    """Start ``code`` (a whole script) in its own session, for signal tests."""
    return subprocess.Popen(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(mark, start_method),
        start_new_session=True,
    )
