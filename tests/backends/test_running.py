"""Running a graph on every backend: the ways to run, one-shot sources, early exit,
backpressure, progress, seeds, reports, stage names and DOT diagrams."""

from __future__ import annotations

import gc
import itertools
import threading
import time
from typing import Any

import numpy as np
import pytest

import headrace as hr
from headrace._flow import MAX_CHUNK
from headrace._stages import AUTO_ITEMS

N = 30


def double(x: int) -> int:
    return 2 * x


def square(x: int) -> int:
    return x * x


def identity(x: Any) -> Any:
    return x


def is_even(x: int) -> bool:
    return x % 2 == 0


def draw(x: int) -> tuple[int, float]:
    return (x, float(hr.rng().random()))


def draw_again(item: tuple[int, float]) -> tuple[int, float, float]:
    return (item[0], item[1], float(hr.rng().random()))


def is_generator(_: Any) -> bool:
    return isinstance(hr.rng(), np.random.Generator)


# --- the ways to run -----------------------------------------------------------------------


def test_iterate_collect_run_open(opts: dict[str, Any]) -> None:
    s = hr.from_iterable(range(N)).map(double, **opts)
    expected = [2 * x for x in range(N)]
    assert list(s) == expected
    assert list(iter(s)) == expected
    assert s.collect() == expected
    report = s.run()
    assert isinstance(report, hr.Report)
    assert report.stage("source").items_in == N
    with s.open() as run:
        assert list(run) == expected
        assert run.report().stage("double").items_out == N


def test_re_iterable_source_runs_afresh(opts: dict[str, Any]) -> None:
    s = hr.from_iterable(range(N)).map(double, **opts)
    assert s.collect() == s.collect() == [2 * x for x in range(N)]
    lst = hr.from_iterable([1, 2, 3]).map(double, **opts)
    assert lst.collect() == [2, 4, 6]
    assert list(lst) == [2, 4, 6]


@pytest.mark.parametrize(
    "make", [lambda: iter([1, 2, 3]), lambda: (x for x in [1, 2, 3])], ids=["iter", "generator"]
)
def test_one_shot_source_runs_once(opts: dict[str, Any], make: Any) -> None:
    s = hr.from_iterable(make()).map(double, **opts)
    assert s.collect() == [2, 4, 6]
    with pytest.raises(hr.HeadraceError, match="one-shot"):
        s.collect()


def test_run_options_accepted(opts: dict[str, Any]) -> None:
    s = hr.from_iterable(range(5)).map(double, **opts)
    assert s.collect(progress=False, seed=None) == [0, 2, 4, 6, 8]
    assert isinstance(s.run(seed=3), hr.Report)
    assert isinstance(hr.run(s, seed=3, progress=False), hr.Report)


def test_no_threads_after_a_run(opts: dict[str, Any], wait_no_threads: Any) -> None:
    hr.from_iterable(range(N)).map(double, **opts).filter(is_even, **opts).collect()
    assert wait_no_threads() == []


# --- early exit ----------------------------------------------------------------------------


def test_break_stops_workers(opts: dict[str, Any], wait_no_threads: Any) -> None:
    s = hr.from_iterable(itertools.count()).map(double, **opts).map(identity, **opts)
    got = []
    for x in s:
        got.append(x)
        if len(got) == 3:
            break
    assert got == [0, 2, 4]
    assert wait_no_threads() == []


def test_exception_in_consumer_stops_workers(opts: dict[str, Any], wait_no_threads: Any) -> None:
    class Stop(Exception):
        pass

    with pytest.raises(Stop):
        for x in hr.from_iterable(itertools.count()).map(double, **opts):
            if x >= 10:
                raise Stop
    assert wait_no_threads() == []


def test_garbage_collected_iterator_stops_workers(
    opts: dict[str, Any], wait_no_threads: Any
) -> None:
    it = iter(hr.from_iterable(itertools.count()).map(double, **opts).map(identity, **opts))
    assert [next(it), next(it)] == [0, 2]
    del it
    gc.collect()
    assert wait_no_threads() == []


def test_break_inside_open_keeps_counts(
    opts: dict[str, Any], wait_no_threads: Any, conserved: Any
) -> None:
    s = hr.from_iterable(range(10_000)).map(double, **opts).filter(is_even, **opts)
    with s.open() as run:
        for i, _ in enumerate(run):
            if i == 4:
                break
    assert wait_no_threads() == []
    report = run.report()
    conserved(report, full=False)
    assert report.stage("source").items_in >= 5


def test_early_exit_of_a_broadcast(opts: dict[str, Any], wait_no_threads: Any) -> None:
    s = hr.from_iterable(itertools.count()).map(identity, **opts)
    z = hr.zip(s.map(double, **opts), s.map(square, **opts))
    for i, pair in enumerate(z):
        assert pair == (2 * i, i * i)
        if i == 5:
            break
    assert wait_no_threads() == []


# --- backpressure --------------------------------------------------------------------------


def stalled_run_ahead(build: Any) -> tuple[int, Any]:
    """Consume 5 items of ``build(source)`` over a counting infinite source, stall, and return
    how far the source ran ahead of the consumer, and the report taken while stalled."""
    pulled = 0

    def counting() -> Any:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield i

    consumed = 5
    with build(hr.from_iterable(counting())).open() as run:
        it = iter(run)
        assert [next(it) for _ in range(consumed)] == [0, 2, 4, 6, 8]
        # The one bounded poll: wait (at most 2 s) for the source to stop running ahead.
        deadline = time.monotonic() + 2.0
        last, stable = -1, 0
        while stable < 5 and time.monotonic() < deadline:
            now = pulled
            stable = stable + 1 if now == last else 0
            last = now
            time.sleep(0.02)
        assert stable >= 5, f"the source kept running ahead of a stalled consumer ({pulled})"
        report = run.report()
    return pulled - consumed, report


#: Chunks a stage holds per worker beyond its output channel: one in hand and one in the
#: reorder window; a process worker two sent to it and one in the reorder window.
HELD_PER_WORKER = {"inline": 2, "thread": 2, "process": 3}


def chunk_bound(capacity: int) -> int:
    """The largest chunk a stage makes: `MAX_CHUNK` small items, or its explicit maxsize."""
    return MAX_CHUNK if capacity == AUTO_ITEMS else min(capacity, MAX_CHUNK)


def in_flight_bound(report: Any) -> int:
    """Items in flight <= per stage: its output channel (its capacity, plus the one chunk it
    accepts beyond it) and the chunks its workers hold (`HELD_PER_WORKER`)."""
    return sum(
        st.capacity + (1 + HELD_PER_WORKER[st.backend] * st.workers) * chunk_bound(st.capacity)
        for st in report.stages
    )


def test_slow_consumer_bounds_the_source(opts: dict[str, Any], wait_no_threads: Any) -> None:
    ahead, report = stalled_run_ahead(
        lambda s: s.map(identity, **opts).map(double, **opts).map(identity, **opts)
    )
    assert ahead <= in_flight_bound(report), f"{ahead} items in flight, {report.table()}"
    assert wait_no_threads() == []


def test_slow_consumer_with_small_channels(opts: dict[str, Any], wait_no_threads: Any) -> None:
    small = {**opts, "maxsize": 2}
    ahead, report = stalled_run_ahead(
        lambda s: s.map(identity, **small).map(double, **small).map(identity, **small)
    )
    assert all(st.capacity == 2 for st in report.stages if st.name != "source")
    assert ahead <= in_flight_bound(report), f"{ahead} items in flight, {report.table()}"
    assert wait_no_threads() == []


# --- progress ------------------------------------------------------------------------------


def test_progress_writes_stage_names_to_stderr(
    opts: dict[str, Any], capfd: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("rich")
    out = (
        hr.from_iterable(range(N)).map(double, **opts, name="progress_probe").collect(progress=True)
    )
    assert out == [2 * x for x in range(N)]
    captured = capfd.readouterr()
    assert "progress_probe" in captured.err


def test_no_output_without_progress(
    opts: dict[str, Any], capfd: pytest.CaptureFixture[str]
) -> None:
    hr.from_iterable(range(N)).map(double, **opts, name="quiet_probe").collect()
    captured = capfd.readouterr()
    assert "quiet_probe" not in captured.err + captured.out


# --- seeds and hr.rng() --------------------------------------------------------------------


def seeded(opts: dict[str, Any], seed: int | None) -> list[tuple[int, float, float]]:
    s = hr.from_iterable(range(N)).map(draw, **opts).map(draw_again, **opts)
    return sorted(s.collect(seed=seed))


def test_seed_gives_same_draws_whatever_the_workers(opts: dict[str, Any]) -> None:
    baseline = seeded({"backend": "thread", "workers": 1}, seed=7)
    assert seeded(opts, seed=7) == baseline
    assert seeded({**opts, "ordered": False}, seed=7) == baseline


def test_seed_same_when_graph_is_rebuilt(opts: dict[str, Any]) -> None:
    assert seeded(opts, seed=11) == seeded(opts, seed=11)


def test_different_seed_different_draws(opts: dict[str, Any]) -> None:
    a = seeded(opts, seed=1)
    b = seeded(opts, seed=2)
    assert [x[1] for x in a] != [x[1] for x in b]
    assert [x[2] for x in a] != [x[2] for x in b]


def test_draws_differ_between_items_and_stages(opts: dict[str, Any]) -> None:
    rows = seeded(opts, seed=5)
    first = [r[1] for r in rows]
    second = [r[2] for r in rows]
    assert len(set(first)) == N, "two items got the same draw"
    assert first != second, "two stages got the same draws"


def test_rng_inside_stage_without_seed_is_a_generator(opts: dict[str, Any]) -> None:
    assert hr.from_iterable(range(5)).map(is_generator, **opts).collect() == [True] * 5


def test_rng_outside_a_stage(opts: dict[str, Any]) -> None:
    g1, g2 = hr.rng(), hr.rng()
    assert isinstance(g1, np.random.Generator)
    assert g1.random() != g2.random()


# --- the report ----------------------------------------------------------------------------


def test_report_figures(opts: dict[str, Any], conserved: Any) -> None:
    s = (
        hr.from_iterable(range(N))
        .map(double, **opts)
        .filter(is_even, **opts, name="keep")
        .map(square, **opts)
    )
    report = s.run()
    assert isinstance(report.wall_s, float) and report.wall_s > 0
    assert isinstance(report.stages, tuple)
    assert all(isinstance(st, hr.StageSnapshot) for st in report.stages)
    names = [st.name for st in report.stages]
    assert {"source", "double", "keep", "square"} <= set(names)
    assert report.bottleneck is None or report.bottleneck in names
    src = report.stage("source")
    assert src.items_in == N
    dbl = report.stage("double")
    assert (dbl.items_in, dbl.items_out, dbl.completed) == (N, N, N)
    assert dbl.kind == "map"
    assert dbl.backend == opts["backend"]
    assert dbl.workers == opts.get("workers", 1)
    keep = report.stage("keep")
    assert keep.items_in == N and keep.dropped == 0 and keep.items_out == N
    assert report.stage("square").items_out == N
    for st in report.stages:
        assert st.done
        assert st.busy_s >= 0 and st.starved_s >= 0 and st.blocked_s >= 0
        assert st.peak_fill <= st.capacity or st.capacity <= 0
    assert len(report.errors) == 0
    conserved(report)


def test_filter_counts_drops(opts: dict[str, Any], conserved: Any) -> None:
    report = hr.from_iterable(range(N)).filter(is_even, **opts).run()
    st = report.stage("is_even")
    assert st.kind == "filter"
    assert (st.items_in, st.items_out, st.dropped) == (N, N // 2, N // 2)
    conserved(report)


def test_flat_map_counts(opts: dict[str, Any], conserved: Any) -> None:
    report = hr.from_iterable(range(N)).flat_map(lambda x: [x] * (x % 3), **opts).run()
    st = report.stage("flat_map")
    assert st.items_in == N
    assert st.items_out == sum(x % 3 for x in range(N))
    conserved(report)


def test_empty_source_report(opts: dict[str, Any], conserved: Any) -> None:
    report = hr.from_iterable([]).map(double, **opts).run()
    assert report.stage("source").items_in == 0
    assert report.stage("double").items_out == 0
    conserved(report)


def test_report_table_and_dict(opts: dict[str, Any]) -> None:
    report = hr.from_iterable(range(N)).map(double, **opts, name="tabled").run()
    table = report.table()
    assert isinstance(table, str) and "tabled" in table and "source" in table
    d = report.to_dict()
    assert {"wall_s", "bottleneck", "stages", "errors"} <= set(d)
    assert isinstance(d["wall_s"], float)
    keys = {
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
    }
    for st in d["stages"]:
        assert keys <= set(st), keys - set(st)
    tabled = next(st for st in d["stages"] if st["name"] == "tabled")
    assert tabled["items_out"] == N and tabled["errors"] == 0
    assert d["errors"] == []


def test_stage_names_default_and_unique(opts: dict[str, Any]) -> None:
    s = (
        hr.from_iterable(range(5))
        .map(square, **opts)
        .map(square, **opts)
        .map(lambda x: x, **opts)
        .map(square, **opts)
    )
    names = [st.name for st in s.run().stages]
    assert {"source", "square", "square#2", "square#3", "map"} <= set(names)
    assert len(names) == len(set(names))


# --- DOT -----------------------------------------------------------------------------------


def test_to_dot_names_every_stage(opts: dict[str, Any]) -> None:
    s = (
        hr.from_iterable(range(5))
        .map(square, **opts)
        .map(square, **opts)
        .filter(is_even, **opts, name="evens")
    )
    dot = s.to_dot()
    assert dot.lstrip().startswith("digraph")
    for name in ("source", "square", "square#2", "evens"):
        assert name in dot


def test_hr_to_dot_of_several_streams(opts: dict[str, Any]) -> None:
    s = hr.from_iterable(range(5))
    a = s.map(double, **opts, name="left_branch")
    b = s.map(square, **opts, name="right_branch")
    dot = hr.to_dot(a, b)
    assert dot.lstrip().startswith("digraph")
    assert "left_branch" in dot and "right_branch" in dot and "source" in dot


def test_to_dot_with_report(opts: dict[str, Any]) -> None:
    s = hr.from_iterable(range(37)).map(double, **opts, name="annotated")
    report = s.run()
    plain = s.to_dot()
    dot = s.to_dot(report=report)
    assert dot.lstrip().startswith("digraph")
    assert "annotated" in dot
    assert "37" in dot
    assert dot != plain
    assert report.to_dot().lstrip().startswith("digraph")


# --- nested --------------------------------------------------------------------------------


def nested_batches(x: int) -> int:
    inner = hr.from_iterable(range(x)).map(double, backend="thread", workers=2).batch(3)
    return sum(len(b) for b in inner)


def test_nested_pipeline_with_batches(opts: dict[str, Any], wait_no_threads: Any) -> None:
    assert hr.from_iterable(range(10)).map(nested_batches, **opts).collect() == list(range(10))
    assert wait_no_threads() == []


def test_concurrent_runs_in_threads(opts: dict[str, Any], wait_no_threads: Any) -> None:
    results: dict[int, list[int]] = {}

    def go(k: int) -> None:
        results[k] = hr.from_iterable(range(N)).map(lambda x: x + k, **opts).collect()

    threads = [threading.Thread(target=go, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {k: [x + k for x in range(N)] for k in range(3)}
    assert wait_no_threads() == []


def slow_half(x: int) -> int:
    time.sleep(0.002)
    return x // 2


def test_dot_marks_the_bottleneck(opts: dict[str, Any]) -> None:
    s = hr.from_iterable(range(40)).map(slow_half, **opts, name="slow").map(double, **opts)
    report = s.run()
    assert report.bottleneck == "slow"
    marked = [line for line in report.to_dot().splitlines() if "ffd8a8" in line]
    assert len(marked) == 1 and "slow" in marked[0]
    assert "ffd8a8" not in s.to_dot()  # no figures, no bottleneck
