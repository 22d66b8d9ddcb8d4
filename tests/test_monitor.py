"""Tests of `headrace._monitor`: the Report and the live Progress display."""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import pytest

import headrace as hr
from headrace._errors import ClosedError
from headrace._monitor import MAX_TABLE_ERRORS, Progress, Report
from headrace._records import ErrorRecord, StageSnapshot

REQUIRED_STAGE_KEYS = [
    "name",
    "backend",
    "workers",
    "items_in",
    "items_out",
    "errors",
    "busy_s",
    "starved_s",
    "blocked_s",
    "items_per_s",
    "peak_fill",
]


def snap(name: str, **changes: Any) -> StageSnapshot:
    figures: dict[str, Any] = {
        "name": name,
        "kind": "map",
        "backend": "thread",
        "workers": 1,
        "items_in": 10,
        "items_out": 10,
        "completed": 10,
        "dropped": 0,
        "errors": 0,
        "cancelled": 0,
        "busy_s": 0.0,
        "starved_s": 0.0,
        "blocked_s": 0.0,
        "items_per_s": 0.0,
        "fill": 0,
        "peak_fill": 0,
        "capacity": 4,
        "done": True,
    }
    figures.update(changes)
    return StageSnapshot(**figures)


def record(stage: str = "parse", index: int | None = 3, message: str = "bad item") -> ErrorRecord:
    return ErrorRecord(
        stage=stage,
        index=index,
        type="ValueError",
        message=message,
        traceback="Traceback (most recent call last):\nValueError: " + message,
    )


def progress_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "headrace-progress"]


# --- Report: bottleneck ------------------------------------------------------------------


def test_bottleneck_is_the_highest_utilisation_not_the_most_busy_seconds() -> None:
    # Over a 2 s run: parse is busy 6 s of 16 worker-seconds (38%), write 1.8 s of 2 (90%).
    stages = [
        snap("read", busy_s=0.5),
        snap("parse", workers=8, busy_s=6.0),
        snap("write", workers=1, busy_s=1.8),
    ]
    assert Report(2.0, stages, []).bottleneck == "write"


def test_bottleneck_tie_goes_to_the_first_stage_in_graph_order() -> None:
    stages = [snap("a", busy_s=1.0), snap("b", busy_s=1.0)]
    assert Report(2.0, stages, []).bottleneck == "a"


@pytest.mark.parametrize(
    ("wall_s", "stages"),
    [
        (1.0, []),
        (1.0, [snap("idle", busy_s=0.0), snap("also-idle", busy_s=0.0)]),
        (0.0, [snap("busy", busy_s=1.0)]),
    ],
    ids=["no-stages", "no-busy-stage", "zero-wall-time"],
)
def test_bottleneck_is_none(wall_s: float, stages: list[StageSnapshot]) -> None:
    report = Report(wall_s, stages, [])
    assert report.bottleneck is None
    assert "bottleneck: none" in report.table()


def test_stages_with_no_busy_time_are_never_the_bottleneck() -> None:
    stages = [snap("source", workers=0, busy_s=0.0), snap("map", busy_s=0.01)]
    assert Report(10.0, stages, []).bottleneck == "map"


# --- Report: attributes, stage(), repr ------------------------------------------------------


def test_attributes_are_tuples_in_the_given_order() -> None:
    stages = [snap("b"), snap("a")]
    errors = [record()]
    report = Report(1, stages, errors)
    assert report.wall_s == 1.0
    assert isinstance(report.wall_s, float)
    assert report.stages == tuple(stages)
    assert report.errors == tuple(errors)


def test_stage_lookup() -> None:
    parse = snap("parse", items_out=7)
    report = Report(1.0, [snap("read"), parse], [])
    assert report.stage("parse") is parse


def test_stage_lookup_missing_names_the_known_stages() -> None:
    report = Report(1.0, [snap("read"), snap("parse")], [])
    with pytest.raises(KeyError) as info:
        report.stage("decode")
    text = str(info.value)
    assert "'decode'" in text
    assert "'read'" in text
    assert "'parse'" in text


def test_repr_is_short_and_str_is_the_table() -> None:
    report = Report(1.5, [snap("read", busy_s=1.0)], [record()])
    assert repr(report) == "<Report wall_s=1.500 stages=1 errors=1 bottleneck='read'>"
    assert str(report) == report.table()


# --- Report: to_dict ----------------------------------------------------------------------


def test_to_dict_layout_and_json_round_trip() -> None:
    stages = [snap("read", busy_s=0.4, peak_fill=3), snap("parse", workers=2, busy_s=0.5)]
    errors = [record(index=None), record(index=5)]
    report = Report(1.25, stages, errors)
    data = report.to_dict()

    assert list(data) == ["wall_s", "bottleneck", "stages", "errors"]
    assert data["wall_s"] == 1.25
    assert data["bottleneck"] == "read"
    assert [s["name"] for s in data["stages"]] == ["read", "parse"]
    all_fields = {f.name for f in fields(StageSnapshot)}
    for stage_dict, stage in zip(data["stages"], stages, strict=True):
        assert list(stage_dict)[: len(REQUIRED_STAGE_KEYS)] == REQUIRED_STAGE_KEYS
        assert set(stage_dict) == all_fields
        assert stage_dict == stage.to_dict()
    assert data["errors"] == [e.to_dict() for e in errors]
    assert list(data["errors"][0]) == ["stage", "index", "type", "message", "traceback"]

    assert json.loads(json.dumps(data)) == data


def test_to_dict_is_a_fresh_copy() -> None:
    report = Report(1.0, [snap("read")], [])
    report.to_dict()["stages"][0]["name"] = "changed"
    assert report.to_dict()["stages"][0]["name"] == "read"


# --- Report: table ------------------------------------------------------------------------


def test_table_has_every_stage_the_columns_and_the_bottleneck() -> None:
    stages = [
        snap("read", backend="thread", busy_s=0.1, peak_fill=2, capacity=8),
        snap("a-much-longer-stage-name", backend="process", workers=4, busy_s=7.4),
        snap("write", backend="inline", busy_s=0.0),
    ]
    table = Report(2.0, stages, []).table()
    lines = table.splitlines()

    assert "wall 2.00 s" in lines[0]
    header = lines[1]
    for column in ["stage", "backend", "workers", "in", "out", "errors", "busy s"]:
        assert column in header
    for column in ["starved s", "blocked s", "items/s", "peak fill"]:
        assert column in header
    rows = {line[2:].split()[0]: line for line in lines[3:6]}
    assert set(rows) == {"read", "a-much-longer-stage-name", "write"}
    assert rows["a-much-longer-stage-name"].startswith("* ")
    assert rows["read"].startswith("  ")
    assert "2/8" in rows["read"]
    assert "7.40" in rows["a-much-longer-stage-name"]
    assert "bottleneck: a-much-longer-stage-name (busy 92% of its workers' time)" in lines
    # Fixed width: the header and every row end at the same column.
    assert len({len(line) for line in lines[1:5]}) == 1


@pytest.mark.parametrize(
    ("items_per_s", "shown"),
    [(0.0, "0.0"), (12.34, "12.3"), (12345.6, "12,346"), (2_500_000.0, "2.50M")],
)
def test_table_items_per_s_is_readable(items_per_s: float, shown: str) -> None:
    row = Report(1.0, [snap("s", items_per_s=items_per_s)], []).table().splitlines()[3]
    assert row.split()[-2] == shown


def test_table_lists_error_records() -> None:
    errors = [record("parse", 3, "bad item"), record("write", None, "disk full")]
    table = Report(1.0, [snap("parse"), snap("write")], errors).table()
    assert "2 errors" in table.splitlines()[0]
    assert "  parse, item 3: ValueError: bad item" in table.splitlines()
    assert "  write, setup: ValueError: disk full" in table.splitlines()
    assert "more" not in table


def test_table_truncates_long_messages_to_one_line() -> None:
    message = "first line\n" + "x" * 500
    table = Report(1.0, [snap("parse")], [record(message=message)]).table()
    line = next(line for line in table.splitlines() if line.startswith("  parse, item 3"))
    assert "first line x" in line
    assert line.endswith("...")
    assert len(line) < 120
    assert "x" * 100 not in table


def test_table_lists_at_most_ten_errors_and_counts_the_rest() -> None:
    errors = [record(index=i, message=f"bad {i}") for i in range(25)]
    lines = Report(1.0, [snap("parse")], errors).table().splitlines()
    listed = [line for line in lines if line.startswith("  parse, item")]
    assert len(listed) == MAX_TABLE_ERRORS == 10
    assert listed[0].endswith("bad 0")
    assert listed[-1].endswith("bad 9")
    assert lines[-1] == "  ... and 15 more"


# --- Report: to_dot -----------------------------------------------------------------------


def test_to_dot_calls_the_dot_callable_with_the_report() -> None:
    seen: list[Report] = []

    def dot(report: Report) -> str:
        seen.append(report)
        return "digraph { read -> parse }"

    report = Report(1.0, [snap("read")], [], dot=dot)
    assert report.to_dot() == "digraph { read -> parse }"
    assert seen == [report]


def test_to_dot_without_a_graph_raises() -> None:
    with pytest.raises(ValueError, match="no graph attached"):
        Report(1.0, [snap("read")], []).to_dot()


# --- Progress -----------------------------------------------------------------------------


class Snapshots:
    """A snapshot callable that counts its calls, sets `reached` at call ``signal_at`` and
    raises at the calls in ``fail_calls`` or while `fail` is set."""

    def __init__(
        self,
        stages: Sequence[StageSnapshot],
        *,
        signal_at: int = 0,
        fail_calls: frozenset[int] = frozenset(),
    ) -> None:
        self.stages = list(stages)
        self.calls = 0
        self.signal_at = signal_at
        self.fail_calls = fail_calls
        self.reached = threading.Event()
        self.fail = False

    def __call__(self) -> tuple[float, Sequence[StageSnapshot]]:
        self.calls += 1
        if self.calls == self.signal_at:
            self.reached.set()
        if self.fail or self.calls in self.fail_calls:
            raise RuntimeError("snapshot failed")
        return 1.0 * self.calls, self.stages


def test_progress_writes_the_stage_names_and_stops_its_thread() -> None:
    pytest.importorskip("rich")
    out = io.StringIO()
    snapshots = Snapshots([snap("read", fill=2, capacity=8), snap("parse-items", done=False)])
    progress = Progress(snapshots, file=out)
    progress.start()
    assert len(progress_threads()) == 1
    assert progress_threads()[0].daemon
    progress.stop()

    assert progress_threads() == []
    text = out.getvalue()
    assert "read" in text
    assert "parse-items" in text
    assert "2/8" in text
    assert "done" in text


def test_progress_refreshes_from_its_thread() -> None:
    pytest.importorskip("rich")
    # start() takes the first snapshot; the thread's first refresh takes the second.
    snapshots = Snapshots([snap("read")], signal_at=2)
    progress = Progress(snapshots, file=io.StringIO(), interval=0.001)
    progress.start()
    try:
        assert snapshots.reached.wait(timeout=10)
    finally:
        progress.stop()
    assert progress_threads() == []


def test_progress_stop_wakes_the_thread_instead_of_waiting_an_interval() -> None:
    pytest.importorskip("rich")
    progress = Progress(Snapshots([snap("read")]), file=io.StringIO(), interval=3600)
    progress.start()
    began = time.monotonic()
    progress.stop()
    # Generous bound: a thread that slept its interval would take an hour.
    assert time.monotonic() - began < 5
    assert progress_threads() == []


def test_progress_stop_twice_and_without_start() -> None:
    pytest.importorskip("rich")
    Progress(Snapshots([])).stop()  # never started: nothing to do

    out = io.StringIO()
    progress = Progress(Snapshots([snap("read")]), file=out)
    progress.start()
    progress.stop()
    written = out.getvalue()
    progress.stop()
    assert out.getvalue() == written
    with pytest.raises(ClosedError):
        progress.start()


def test_progress_start_twice_raises() -> None:
    pytest.importorskip("rich")
    progress = Progress(Snapshots([snap("read")]), file=io.StringIO())
    progress.start()
    try:
        with pytest.raises(RuntimeError, match="running already"):
            progress.start()
    finally:
        progress.stop()
    assert progress_threads() == []


def test_progress_defaults_to_stderr_at_start_time(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("rich")
    progress = Progress(Snapshots([snap("stage-on-stderr")]))
    progress.start()
    progress.stop()
    captured = capsys.readouterr()
    assert "stage-on-stderr" in captured.err
    assert captured.out == ""


def test_progress_survives_a_failing_snapshot_in_its_thread(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pytest.importorskip("rich")
    # Call 1 is start's; the thread's first two refreshes fail, its third is call 4.
    snapshots = Snapshots([snap("read")], signal_at=4, fail_calls=frozenset({2, 3}))
    progress = Progress(snapshots, file=io.StringIO(), interval=0.001)
    progress.start()
    try:
        assert snapshots.reached.wait(timeout=10)
        assert len(progress_threads()) == 1
    finally:
        progress.stop()
    assert progress_threads() == []
    warnings = [r for r in caplog.records if r.name == "headrace"]
    assert len(warnings) == 1
    assert "could not refresh" in warnings[0].getMessage()


def test_progress_stop_still_stops_the_display_when_the_last_snapshot_fails() -> None:
    pytest.importorskip("rich")
    snapshots = Snapshots([snap("read")])
    progress = Progress(snapshots, file=io.StringIO(), interval=3600)
    progress.start()
    snapshots.fail = True
    with pytest.raises(RuntimeError, match="snapshot failed"):
        progress.stop()
    assert progress_threads() == []
    progress.stop()  # already stopped


def hide_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    """What import finds when rich is missing; its submodules too, in case rich was imported."""
    monkeypatch.setitem(sys.modules, "rich", None)
    for name in [name for name in sys.modules if name.startswith("rich.")]:
        monkeypatch.setitem(sys.modules, name, None)


def test_progress_without_rich_writes_plain_lines_and_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hide_rich(monkeypatch)
    out = io.StringIO()
    snapshots = Snapshots([snap("read"), snap("parse", errors=2, done=False)], signal_at=3)
    progress = Progress(snapshots, file=out, plain_interval=0.01)
    progress.start()
    assert snapshots.reached.wait(10), "no periodic line was written"
    progress.stop()
    assert progress_threads() == []
    lines = out.getvalue().splitlines()
    assert 'pip install "headrace[progress]"' in lines[0]
    figures = lines[1:]
    assert len(figures) >= 3  # two periodic lines at least, and the final one
    assert all(line.startswith("headrace ") for line in figures)
    assert "read 10 out (done)" in figures[-1] and "parse 10 out, 2 errors" in figures[-1]
    progress.stop()  # already stopped


def test_a_run_with_progress_and_no_rich_still_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    hide_rich(monkeypatch)
    assert hr.from_iterable(range(3)).map(abs, name="absolute").collect(progress=True) == [0, 1, 2]
    err = capsys.readouterr().err
    assert "headrace[progress]" in err
    assert "absolute 3 out (done)" in err.splitlines()[-1]


def test_progress_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval"):
        Progress(Snapshots([]), interval=0)
