"""Conservation on every exit path (issue 15, finding 8): every item the source yielded is
accounted for in the report, also when the run ends early.

For each stage, ``items_in == completed + dropped + errors + cancelled``; along the chain,
what a stage handed on is what the next stage counts in (items left in a channel, refused by a
cancelled put, or in flight count there as ``cancelled``); the source's ``items_out`` is what
it yielded. Checked after an exception under ``on_error="raise"``, a source that raises, an
early ``break``, ``take(n)`` and (process workers) a crash loop.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
from typing import Any

import cloudpickle
import pytest

import headrace as hr

# Process workers get this module's functions by value (the test module is not importable
# under its own name in a worker).
cloudpickle.register_pickle_by_value(sys.modules[__name__])

N = 3000
FAULT = 1337


def same(x: int) -> int:
    return x


def odd(x: int) -> bool:
    return x % 2 == 1


def boom(x: int) -> int:
    if x == FAULT:
        raise ValueError(f"boom at {x}")
    return x


def crash_many(x: int) -> int:
    if x % 3 == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def failing_source() -> Any:
    for i in range(N):
        if i == FAULT:
            raise LookupError(f"the source failed at {i}")
        yield i


def pipeline(opts: dict[str, Any], middle: Any = boom, **middle_opts: Any) -> hr.Stream:
    stream = hr.from_iterable(range(N), name="source").map(same, name="a", **opts)
    stream = stream.map(middle, name="b", **{**opts, **middle_opts})
    return stream.filter(odd, name="c", **opts)


def accounted(report: hr.Report, yielded: int) -> None:
    stages = report.stages
    for s in stages:
        total = s.completed + s.dropped + s.errors + s.cancelled
        assert s.items_in == total, f"{s.name}: in {s.items_in} != {total} ({s})"
    for up, down in itertools.pairwise(stages):
        assert up.items_out == down.items_in, (
            f"{up.name} handed on {up.items_out} items, {down.name} counts {down.items_in}"
        )
    assert stages[0].items_out == yielded
    records = [r for r in report.errors if r.index is not None]
    assert sum(s.errors for s in stages) == len(records), (report.errors, stages)


def consume(run: hr.Run, stop_after: int | None = None) -> tuple[list[Any], BaseException | None]:
    out: list[Any] = []
    try:
        with run:
            for item in run:
                out.append(item)
                if stop_after is not None and len(out) == stop_after:
                    break
    except Exception as exc:
        return out, exc
    return out, None


def test_an_exception_under_raise(opts: dict[str, Any]) -> None:
    run = pipeline(opts).open()
    _, error = consume(run)
    assert isinstance(error, ValueError)
    report = run.report()
    accounted(report, report.stages[0].items_out)
    assert report.stage("b").errors == 1


def test_a_source_that_raises(opts: dict[str, Any]) -> None:
    stream = hr.from_iterable(failing_source(), name="source").map(same, name="a", **opts)
    run = stream.map(same, name="b", **opts).open()
    _, error = consume(run)
    assert isinstance(error, LookupError)
    report = run.report()
    source = report.stage("source")
    assert (source.items_out, source.errors) == (FAULT, 1)
    accounted(report, FAULT)


def test_an_early_break(opts: dict[str, Any]) -> None:
    run = pipeline(opts, same).open()
    out, error = consume(run, stop_after=5)
    assert error is None and len(out) == 5
    report = run.report()
    accounted(report, report.stages[0].items_out)


def test_take(opts: dict[str, Any]) -> None:
    run = pipeline(opts, same).take(7).open()
    out, error = consume(run)
    assert error is None and out == [1, 3, 5, 7, 9, 11, 13]
    report = run.report()
    accounted(report, report.stages[0].items_out)
    assert report.stage("take").completed == 7


def test_a_drained_run_cancels_nothing(opts: dict[str, Any]) -> None:
    run = pipeline(opts, same).open()
    out, error = consume(run)
    assert error is None and len(out) == N // 2
    report = run.report()
    accounted(report, N)
    assert all(s.cancelled == 0 for s in report.stages)


@pytest.mark.parametrize("on_error", ["skip", "raise"])
def test_a_crash_loop(on_error: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers dying on many different items end the run with one record, which the stage
    counts in its errors (it showed errors=0)."""
    monkeypatch.setenv("HEADRACE_START_METHOD", "forkserver")
    opts = {"backend": "process", "workers": 2}
    run = pipeline(opts, crash_many, on_error=on_error).open()
    _, error = consume(run)
    assert isinstance(error, hr.WorkerCrashedError)
    report = run.report()
    accounted(report, report.stages[0].items_out)
    assert report.stage("b").errors >= 1
    if on_error == "raise":
        assert report.stage("b").errors == 1 and len(report.errors) == 1
