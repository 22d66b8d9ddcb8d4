"""Fixtures of the backend suite: every test here runs once per backend.

``opts`` is the dict of stage options that selects the backend; a test passes it to the
stages it exercises (``stream.map(fn, **opts)``). Adding a backend is one line in BACKENDS.
"""

from __future__ import annotations

import ast
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

BACKENDS = [
    pytest.param({"backend": "inline"}, id="inline"),
    pytest.param({"backend": "thread", "workers": 3}, id="thread"),
    pytest.param({"backend": "process", "workers": 2}, id="forkserver"),
    pytest.param({"backend": "process", "workers": 2, "start_method": "spawn"}, id="spawn"),
    # Process stages on a local Ray (hr.RayEngine): their workers are Ray actors.
    pytest.param({"backend": "process", "workers": 2, "engine": "ray"}, id="ray"),
]

#: How long the workers of a closed run may take to go away (the contract says within 1 s).
THREADS_GONE_S = 1.0


@pytest.fixture(params=BACKENDS)
def opts(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Stage options selecting one backend (a fresh dict: tests may extend it). A process
    backend's start method is a run option; the fixture sets it through the environment. The
    engine is a run option too: for "ray", every run of the test gets ``engine=RayEngine()``
    (on the session's local Ray) unless the test gives one."""
    params = dict(request.param)
    method = params.pop("start_method", "forkserver")
    if params.pop("engine", None) == "ray":
        request.getfixturevalue("ray_session")
        _use_ray_engine(monkeypatch)
    elif params["backend"] == "process":
        monkeypatch.setenv("HEADRACE_START_METHOD", method)
    return params


def _use_ray_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    import headrace as hr
    from headrace import _run

    engine = hr.RayEngine()
    init = _run.Run.__init__

    def with_engine(self: Any, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("engine") is None:
            kwargs["engine"] = engine
        init(self, *args, **kwargs)

    monkeypatch.setattr(_run.Run, "__init__", with_engine)


class Recorder:
    """A list that workers of any backend can append to, process workers included: one line
    per item, appended to a file (an O_APPEND write of a short line is atomic)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, item: Any) -> None:
        with open(self.path, "a") as f:
            f.write(repr(item) + "\n")

    __call__ = append

    def items(self) -> list[Any]:
        if not self.path.exists():
            return []
        return [ast.literal_eval(line) for line in self.path.read_text().splitlines()]


# Worker processes get the recorder by value: by reference it would be `conftest.Recorder`,
# and `conftest` may name tests/conftest.py in a worker.
cloudpickle.register_pickle_by_value(sys.modules[Recorder.__module__])


@pytest.fixture
def recorder(tmp_path: Path) -> Callable[[], Recorder]:
    """Makes `Recorder`s in the test's temp dir."""
    count = iter(range(1_000_000))
    return lambda: Recorder(tmp_path / f"recorded-{next(count)}.txt")


@pytest.fixture
def needs_shared_state(opts: dict[str, Any]) -> None:
    """Skip on backends whose workers do not share this process's memory (the test's
    callables record into Python objects of the test, e.g. a list or a threading.Event)."""
    if opts["backend"] not in ("inline", "thread"):
        pytest.skip("the test's callables share state with the test process")


def headrace_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("headrace"))


@pytest.fixture
def wait_no_threads() -> Callable[..., list[str]]:
    """A function that polls (bounded) until no ``headrace*`` thread is alive and returns the
    names of those still alive at the deadline (``[]`` when all are gone)."""

    def wait(timeout: float = THREADS_GONE_S) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            names = headrace_threads()
            if not names or time.monotonic() >= deadline:
                return names
            time.sleep(0.01)

    return wait


@pytest.fixture
def conserved() -> Callable[..., None]:
    """A function asserting the conservation law on every stage of a report:
    ``items_in == completed + dropped + errors + cancelled``; with ``full=True`` (the run was
    drained, no early exit) also ``cancelled == 0``."""

    def check(report: Any, *, full: bool = True) -> None:
        assert report.stages, "the report has no stages"
        for s in report.stages:
            total = s.completed + s.dropped + s.errors + s.cancelled
            assert s.items_in == total, (
                f"stage {s.name!r}: items_in={s.items_in} but completed={s.completed} "
                f"+ dropped={s.dropped} + errors={s.errors} + cancelled={s.cancelled} = {total}"
            )
            if full:
                assert s.cancelled == 0, f"stage {s.name!r} cancelled {s.cancelled} items"

    return check
