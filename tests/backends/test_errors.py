"""Errors on every backend: original types, worker tracebacks, notes, on_error="skip",
retries, timeouts, failing sources, routes to a branch that does not exist."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest

import headrace as hr
from headrace._runner import CLOSE_TIMEOUT

N = 20

#: RELIABILITY §2: an error reaches the consumer within 0.5 s; tests allow 2 s.
ERROR_WITHIN_S = 2.0


class TwoArgError(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


class SourceBroke(Exception):
    pass


def identity(x: Any) -> Any:
    return x


def explode_on_seven(x: int) -> int:
    if x == 7:
        raise KeyError(f"no key for {x}")
    return x


def fail_on_fives(x: int) -> int:
    if x % 5 == 0:
        raise ValueError(f"bad item {x}")
    return x


def two_arg_failure(x: int) -> int:
    if x == 3:
        raise TwoArgError(42, "the detail")
    return x


def reject_seven(x: int) -> bool:
    if x == 7:
        raise ZeroDivisionError("filter broke")
    return True


def expand_seven(x: int) -> list[int]:
    if x == 7:
        raise LookupError("flat_map broke")
    return [x]


def transform_seven(items: Any) -> Any:
    for x in items:
        if x == 7:
            raise ArithmeticError("transform broke")
        yield x


def sink_seven(x: int) -> None:
    if x == 7:
        raise PermissionError("sink broke")


def broken_source() -> Any:
    for i in range(10):
        if i == 3:
            raise SourceBroke("the source broke")
        yield i


def sleepy(x: int) -> int:
    if x == 2:
        time.sleep(0.5)
    return x


def notes_of(exc: BaseException) -> list[str]:
    return list(getattr(exc, "__notes__", []))


def assert_delivered(exc: BaseException, *, stage: str, index: int | None, function: str) -> None:
    cause = exc.__cause__
    assert cause is not None, "no worker traceback attached as __cause__"
    assert function in str(cause), f"the traceback does not name {function!r}: {cause}"
    notes = notes_of(exc)
    assert any(f"stage {stage!r}" in n for n in notes), notes
    if index is not None:
        assert any(f"item {index}" in n for n in notes), notes


# --- original type, traceback, note --------------------------------------------------------


def test_map_error_keeps_type_traceback_and_note(
    opts: dict[str, Any], wait_no_threads: Any
) -> None:
    s = hr.from_iterable(range(N)).map(explode_on_seven, **opts, name="parse")
    with pytest.raises(KeyError) as info:
        s.collect()
    assert type(info.value) is KeyError
    assert_delivered(info.value, stage="parse", index=7, function="explode_on_seven")
    assert wait_no_threads() == []


def test_error_note_uses_default_stage_name(opts: dict[str, Any]) -> None:
    with pytest.raises(KeyError) as info:
        hr.from_iterable(range(N)).map(explode_on_seven, **opts).collect()
    assert_delivered(info.value, stage="explode_on_seven", index=7, function="explode_on_seven")


def test_error_index_counts_items_entering_the_stage(opts: dict[str, Any]) -> None:
    """The item index is the position of the item in the stage's input."""
    s = (
        hr.from_iterable(range(100, 100 + N))
        .map(lambda x: x - 100, **opts)
        .map(explode_on_seven, **opts, name="late")
    )
    with pytest.raises(KeyError) as info:
        s.collect()
    assert_delivered(info.value, stage="late", index=7, function="explode_on_seven")


def test_multi_argument_exception(opts: dict[str, Any]) -> None:
    with pytest.raises(TwoArgError) as info:
        hr.from_iterable(range(N)).map(two_arg_failure, **opts).collect()
    assert type(info.value) is TwoArgError
    assert (info.value.code, info.value.detail) == (42, "the detail")
    assert_delivered(info.value, stage="two_arg_failure", index=3, function="two_arg_failure")


@pytest.mark.parametrize(
    ("method", "fn", "exc_type"),
    [
        ("filter", reject_seven, ZeroDivisionError),
        ("flat_map", expand_seven, LookupError),
        ("sink", sink_seven, PermissionError),
    ],
)
def test_error_in_each_stage_kind(
    opts: dict[str, Any], method: str, fn: Any, exc_type: type, wait_no_threads: Any
) -> None:
    s = getattr(hr.from_iterable(range(N)), method)(fn, **opts)
    with pytest.raises(exc_type) as info:
        hr.run(s)
    assert type(info.value) is exc_type
    assert_delivered(info.value, stage=fn.__name__, index=7, function=fn.__name__)
    assert wait_no_threads() == []


def test_error_in_transform(opts: dict[str, Any], wait_no_threads: Any) -> None:
    with pytest.raises(ArithmeticError) as info:
        hr.from_iterable(range(N)).transform(transform_seven, **opts).collect()
    assert type(info.value) is ArithmeticError
    assert_delivered(info.value, stage="transform_seven", index=None, function="transform_seven")
    assert wait_no_threads() == []


def test_error_raised_while_iterating(opts: dict[str, Any], wait_no_threads: Any) -> None:
    seen = []
    with pytest.raises(KeyError):
        for x in hr.from_iterable(range(N)).map(explode_on_seven, **opts):
            seen.append(x)
    assert seen == list(range(len(seen))) and len(seen) <= 7
    assert wait_no_threads() == []


def test_source_that_raises(opts: dict[str, Any], wait_no_threads: Any) -> None:
    with pytest.raises(SourceBroke) as info:
        hr.from_iterable(broken_source()).map(identity, **opts).collect()
    assert type(info.value) is SourceBroke
    assert_delivered(info.value, stage="source", index=3, function="broken_source")
    assert wait_no_threads() == []


def test_class_constructor_error_keeps_type(opts: dict[str, Any], wait_no_threads: Any) -> None:
    class Unloadable:
        def __init__(self) -> None:
            raise FileNotFoundError("weights.bin")

        def __call__(self, x: int) -> int:
            return x

    with pytest.raises(FileNotFoundError) as info:
        hr.from_iterable(range(N)).map(Unloadable, **opts).collect()
    assert "weights.bin" in str(info.value)
    assert info.value.__cause__ is not None
    assert wait_no_threads() == []


# --- on_error="skip" -----------------------------------------------------------------------


def test_skip_drops_failed_items_and_records_them(opts: dict[str, Any], conserved: Any) -> None:
    s = hr.from_iterable(range(N)).map(fail_on_fives, **opts, on_error="skip", name="check")
    with s.open() as run:
        out = list(run)
        report = run.report()
    assert out == [x for x in range(N) if x % 5 != 0]
    failed = [x for x in range(N) if x % 5 == 0]
    assert sorted(r.index for r in report.errors) == failed
    for r in report.errors:
        assert isinstance(r, hr.ErrorRecord)
        assert r.stage == "check"
        assert r.type == "ValueError"
        assert f"bad item {r.index}" in r.message
        assert "fail_on_fives" in r.traceback
    st = report.stage("check")
    assert st.errors == len(failed)
    assert st.items_out == N - len(failed)
    conserved(report)


def test_skip_unordered(opts: dict[str, Any], conserved: Any) -> None:
    s = hr.from_iterable(range(N)).map(fail_on_fives, **opts, on_error="skip", ordered=False)
    with s.open() as run:
        out = list(run)
        report = run.report()
    assert Counter(out) == Counter(x for x in range(N) if x % 5 != 0)
    assert len(report.errors) == 4
    conserved(report)


@pytest.mark.parametrize(("method", "fn"), [("filter", reject_seven), ("flat_map", expand_seven)])
def test_skip_in_filter_and_flat_map(
    opts: dict[str, Any], method: str, fn: Any, conserved: Any
) -> None:
    s = getattr(hr.from_iterable(range(N)), method)(fn, **opts, on_error="skip")
    with s.open() as run:
        out = list(run)
        report = run.report()
    assert out == [x for x in range(N) if x != 7]
    assert [(r.stage, r.index) for r in report.errors] == [(fn.__name__, 7)]
    conserved(report)


def test_skip_in_sink(opts: dict[str, Any], conserved: Any) -> None:
    report = hr.run(hr.from_iterable(range(N)).sink(sink_seven, **opts, on_error="skip"))
    assert [(r.stage, r.index, r.type) for r in report.errors] == [
        ("sink_seven", 7, "PermissionError")
    ]
    conserved(report)


def test_skip_then_more_stages(opts: dict[str, Any], conserved: Any) -> None:
    s = (
        hr.from_iterable(range(N))
        .map(fail_on_fives, **opts, on_error="skip")
        .map(identity, **opts, name="after")
    )
    report = s.run()
    assert report.stage("after").items_in == N - 4
    assert report.stage("after").items_out == N - 4
    conserved(report)


# --- retries -------------------------------------------------------------------------------


class Flaky:
    """Fails the first ``failures`` calls for each item, counting calls per item in a
    recorder (so that process workers count too)."""

    def __init__(self, failures: int, record: Any) -> None:
        self.failures = failures
        self.record = record

    def __call__(self, x: int) -> int:
        self.record.append(x)
        n = self.calls[x]  # one item is tried by one worker at a time
        if n <= self.failures:
            raise ConnectionError(f"attempt {n} for item {x}")
        return x

    @property
    def calls(self) -> Counter[int]:
        return Counter(self.record.items())


def test_retries_recover(opts: dict[str, Any], recorder: Any, conserved: Any) -> None:
    flaky = Flaky(failures=2, record=recorder())
    s = hr.from_iterable(range(N)).map(flaky, **opts, retries=2)
    with s.open() as run:
        out = list(run)
        report = run.report()
    assert out == list(range(N))
    assert len(report.errors) == 0
    assert all(flaky.calls[x] == 3 for x in range(N))
    conserved(report)


def test_retries_exhausted_raise(opts: dict[str, Any], recorder: Any) -> None:
    flaky = Flaky(failures=3, record=recorder())
    with pytest.raises(ConnectionError) as info:
        hr.from_iterable(range(N)).map(flaky, **opts, retries=2).collect()
    assert type(info.value) is ConnectionError
    assert info.value.__cause__ is not None
    assert max(flaky.calls.values()) == 3


def test_retries_exhausted_skip(opts: dict[str, Any], recorder: Any, conserved: Any) -> None:
    flaky = Flaky(failures=2, record=recorder())
    s = hr.from_iterable(range(6)).map(flaky, **opts, retries=1, on_error="skip", name="fetch")
    with s.open() as run:
        out = list(run)
        report = run.report()
    assert out == []
    assert sorted(r.index for r in report.errors) == list(range(6))
    assert {r.type for r in report.errors} == {"ConnectionError"}
    assert all(flaky.calls[x] == 2 for x in range(6))
    conserved(report)


# --- timeout -------------------------------------------------------------------------------


def test_timeout_raises(opts: dict[str, Any], wait_no_threads: Any) -> None:
    with pytest.raises(hr.StageTimeoutError) as info:
        hr.from_iterable(range(5)).map(sleepy, **opts, timeout=0.05, name="slow").collect()
    assert isinstance(info.value, hr.HeadraceError)
    assert any("stage 'slow'" in n for n in notes_of(info.value)) or "slow" in str(info.value)
    assert wait_no_threads(2.0) == []


def test_timeout_skip_records_error(
    opts: dict[str, Any], conserved: Any, wait_no_threads: Any
) -> None:
    s = hr.from_iterable(range(5)).map(sleepy, **opts, timeout=0.05, on_error="skip", name="slow")
    with s.open() as run:
        out = list(run)
        report = run.report()
    assert Counter(out) == Counter([0, 1, 3, 4])
    assert [(r.stage, r.index, r.type) for r in report.errors] == [("slow", 2, "StageTimeoutError")]
    conserved(report)
    assert wait_no_threads(2.0) == []


class SlowItem:
    """Item 2 runs past a 0.2 s timeout: on its first call only (``always=False``) or on
    every call; its calls are counted in a recorder (so that process workers count too)."""

    def __init__(self, record: Any, always: bool) -> None:
        self.record = record
        self.always = always

    def __call__(self, x: int) -> int:
        if x == 2:
            self.record.append(x)
            if self.always or len(self.record.items()) == 1:
                time.sleep(0.6)
        return x


def test_a_timed_out_item_is_retried(opts: dict[str, Any], recorder: Any, conserved: Any) -> None:
    """Retries mean what they say for timeouts too (issue 15, finding 6)."""
    slow = SlowItem(recorder(), always=False)
    s = hr.from_iterable(range(5)).map(slow, **opts, timeout=0.2, retries=1, on_error="skip")
    with s.open() as run:
        out = list(run)
        report = run.report()
    assert sorted(out) == [0, 1, 2, 3, 4]
    assert report.errors == ()
    assert len(slow.record.items()) == 2
    conserved(report)


def test_an_item_late_past_its_retries_is_recorded(
    opts: dict[str, Any], recorder: Any, conserved: Any
) -> None:
    slow = SlowItem(recorder(), always=True)
    s = hr.from_iterable(range(5)).map(slow, **opts, timeout=0.2, retries=1, on_error="skip")
    with s.open() as run:
        out = list(run)
        report = run.report()
    assert sorted(out) == [0, 1, 3, 4]
    assert [(r.index, r.type) for r in report.errors] == [(2, "StageTimeoutError")]
    assert len(slow.record.items()) == 2  # tried 1 + retries times
    conserved(report)


def test_timeout_detected_while_the_call_runs(
    opts: dict[str, Any], needs_shared_state: None, wait_no_threads: Any
) -> None:
    if opts["backend"] == "inline":
        pytest.skip("inline detects the deadline when the call returns")
    release = threading.Event()
    returned = threading.Event()

    def hang(x: int) -> int:
        if x == 1:
            release.wait(10)
            returned.set()
        return x

    try:
        start = time.monotonic()
        with pytest.raises(hr.StageTimeoutError):
            hr.from_iterable(range(4)).map(hang, **opts, timeout=0.1).collect()
        elapsed = time.monotonic() - start
        assert not returned.is_set(), (
            "StageTimeoutError reached the consumer only after the hung call returned "
            "(detected on return, or close waited for the hung worker)"
        )
        # RELIABILITY §2: an error reaches the consumer within 0.5 s; tests allow 2 s.
        assert elapsed < ERROR_WITHIN_S, f"StageTimeoutError took {elapsed:.2f} s to arrive"
    finally:
        release.set()
    assert wait_no_threads(2.0) == []


def test_close_does_not_wait_for_a_call_that_timed_out_on_threads(wait_no_threads: Any) -> None:
    """A thread cannot be stopped, so a call past its timeout runs on, abandoned: its item is
    recorded, its result would be discarded. The run's end does not wait for it (it waited
    the whole close timeout, 5 s, for a result nobody wants); the thread ends when the call
    returns."""
    release = threading.Event()
    returned = threading.Event()

    def hang(x: int) -> int:
        if x == 3:
            release.wait(30)
            returned.set()
        return x

    try:
        start = time.monotonic()
        stream = hr.from_iterable(range(10)).map(
            hang, backend="thread", workers=2, timeout=0.2, on_error="skip", name="hang"
        )
        with stream.open() as run:
            out = list(run)
            report = run.report()
        elapsed = time.monotonic() - start
        assert sorted(out) == [x for x in range(10) if x != 3]
        assert [(r.index, r.type) for r in report.errors] == [(3, "StageTimeoutError")]
        assert not returned.is_set()
        alive = [t.name for t in threading.enumerate() if t.name.startswith("headrace-hang")]
        assert alive, "the abandoned call's thread is gone: the test no longer tests the close"
        assert elapsed < CLOSE_TIMEOUT / 2, f"the run took {elapsed:.2f} s to end"
    finally:
        release.set()
    assert returned.wait(5)
    assert wait_no_threads(2.0) == []


@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
def test_error_not_held_back_by_a_busy_worker(
    opts: dict[str, Any], ordered: bool, needs_shared_state: None, wait_no_threads: Any
) -> None:
    """Item 0 fails while item 1 is still running: the error reaches the consumer at once,
    not when the other call ends (RELIABILITY §2)."""
    if opts.get("workers", 1) < 2:
        pytest.skip("needs 2 items in flight at once")
    busy = threading.Event()
    release = threading.Event()

    def fn(x: int) -> int:
        if x == 0:
            if not busy.wait(10):
                raise AssertionError("item 1 never started")
            raise KeyError("item 0 failed")
        if x == 1:
            busy.set()
            release.wait(10)
        return x

    try:
        start = time.monotonic()
        with pytest.raises(KeyError):
            hr.from_iterable(range(4)).map(fn, **opts, ordered=ordered).collect()
        elapsed = time.monotonic() - start
        assert not release.is_set()
        assert elapsed < ERROR_WITHIN_S, f"the error took {elapsed:.2f} s to reach the consumer"
    finally:
        release.set()
    assert wait_no_threads(2.0) == []


def test_error_behind_a_slow_earlier_item_is_not_held_in_order(
    opts: dict[str, Any], needs_shared_state: None, wait_no_threads: Any
) -> None:
    """Ordered: item 1 fails while item 0 is still running; the failure does not wait in the
    reorder window for item 0 (RELIABILITY §2)."""
    if opts.get("workers", 1) < 2:
        pytest.skip("needs 2 items in flight at once")
    slow_started = threading.Event()
    release = threading.Event()

    def fn(x: int) -> int:
        if x == 0:
            slow_started.set()
            release.wait(10)
        if x == 1:
            if not slow_started.wait(10):
                raise AssertionError("item 0 never started")
            raise LookupError("item 1 failed")
        return x

    try:
        start = time.monotonic()
        with pytest.raises(LookupError):
            hr.from_iterable(range(4)).map(fn, **opts, ordered=True).collect()
        elapsed = time.monotonic() - start
        assert not release.is_set()
        assert elapsed < ERROR_WITHIN_S, f"the error took {elapsed:.2f} s to reach the consumer"
    finally:
        release.set()
    assert wait_no_threads(2.0) == []


def exit_on_three(x: int) -> int:
    if x == 3:
        raise SystemExit(7)
    return x


def test_system_exit_in_user_code_is_an_item_error(opts: dict[str, Any], conserved: Any) -> None:
    """SystemExit raised by user code fails its item like any error; it neither kills the
    worker pool silently, nor ends the consumer's program, nor escapes under skip."""
    with pytest.raises(hr.HeadraceError) as info:
        hr.from_iterable(range(6)).map(exit_on_three, **opts).collect()
    assert isinstance(info.value.__cause__, SystemExit) and info.value.__cause__.code == 7
    assert any("item 3" in note for note in getattr(info.value, "__notes__", []))
    with hr.from_iterable(range(6)).map(exit_on_three, **opts, on_error="skip").open() as run:
        assert sorted(run) == [0, 1, 2, 4, 5]
    report = run.report()
    assert [(e.index, e.type) for e in report.errors] == [(3, "SystemExit")]
    conserved(report)


# --- route to a branch that does not exist -------------------------------------------------


def route_bad_1234(x: int) -> int:
    return 5 if x == 1234 else x % 2


def test_route_out_of_range_raises(opts: dict[str, Any], wait_no_threads: Any) -> None:
    items = [0, 1, 2, 1234, 4]
    a, b = hr.from_iterable(items).map(identity, **opts).route(route_bad_1234, 2)
    with pytest.raises(ValueError) as info:
        hr.merge(a, b).collect()
    assert "1234" in str(info.value)
    assert wait_no_threads() == []


def test_route_out_of_range_skip(opts: dict[str, Any]) -> None:
    items = [0, 1, 2, 1234, 4]
    a, b = hr.from_iterable(items).map(identity, **opts).route(route_bad_1234, 2, on_error="skip")
    with hr.merge(a.map(identity, **opts), b.map(identity, **opts)).open() as run:
        out = list(run)
        report = run.report()
    assert Counter(out) == Counter([0, 1, 2, 4])
    assert [(r.stage, r.index) for r in report.errors] == [("route_bad_1234", 3)]
    assert "1234" in report.errors[0].message


# --- to_dict of errors ---------------------------------------------------------------------


def test_error_records_in_to_dict(opts: dict[str, Any]) -> None:
    report = hr.from_iterable(range(N)).map(fail_on_fives, **opts, on_error="skip").run()
    d = report.to_dict()
    assert len(d["errors"]) == 4
    for e in d["errors"]:
        assert {"stage", "index", "type", "message", "traceback"} <= set(e)
        assert e["type"] == "ValueError" and e["stage"] == "fail_on_fives"
