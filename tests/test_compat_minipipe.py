"""Minipipe's documented API and examples run on ``headrace.compat.minipipe``.

The two toy examples of ``shared/seeds/001_488ae85461881940.txt`` are copied with only the import
changed; two mistakes of the document itself are fixed and marked ``# doc fix`` (a Python 2
``print`` statement, and ``split`` reading the batches instead of their sums, which raises in
NumPy; a test checks that this error reaches ``close()``). The segments run on process workers
by default, as Minipipe's do; what a test must observe in this process (printed lines, a list)
runs with ``backend="thread"``.
"""

# The examples keep the document's own style (camelCase names, print).
# ruff: noqa: RUF059

from __future__ import annotations

import logging
import random
import signal
import sys
import threading
import time

import cloudpickle
import numpy as np
import pytest

import headrace as hr
from headrace.compat.minipipe import (
    PipeLine,
    PipeSystem,
    Regulator,
    Sentinel,
    Sink,
    Source,
    Stream,
    Transform,
)

# Process workers get this module's functions by value (it is not importable there).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


# --- the document's functors ---------------------------------------------------------------


def genRand(n=10):
    for _ in range(n):
        yield np.random.rand(10)


def batch(batch_size=2):
    x = yield
    for i in range(len(x) // batch_size):
        yield x[i * batch_size : (i + 1) * batch_size]


def sumBatch(x):
    return x.sum()


def print_out(x):
    print(x)


def split(x):
    return [x, None] if x > 1 else [None, x]


def output_gt_1(x):
    print("1 <", x)  # doc fix: print statement of Python 2


def output_lt_1(x):
    print("1 >", x)  # doc fix: print statement of Python 2


def toy_pipeline(**options):
    pline = PipeLine(**options)
    pline.add(Source(genRand, "source"))
    pline.add(Regulator(batch, "batcher"), buffer_size=10)
    pline.add(Transform(sumBatch, "sum"), n_processes=3)
    pline.add(Sink(print_out, "print"))
    return pline


def toy_system(split_reads_sums=True, **options):
    s1, s2, s3, s4, s5 = Stream(), Stream(), Stream(), Stream(), Stream()
    split_input = s3 if split_reads_sums else s2  # doc fix: split compares sums with 1
    pipes = [
        Source(genRand, "source1", downstreams=[s1]),
        Source(genRand, "source2", downstreams=[s1]),
        Regulator(batch, "batcher", upstreams=[s1], downstreams=[s2]),
        Transform(sumBatch, "sum", upstreams=[s2], downstreams=[s3]),
        Transform(sumBatch, "sum", upstreams=[s2], downstreams=[s3]),
        Transform(sumBatch, "sum", upstreams=[s2], downstreams=[s3]),
        Transform(split, "split", upstreams=[split_input], downstreams=[s4, s5]),
        Sink(output_gt_1, "print_gt_1", upstreams=[s4]),
        Sink(output_lt_1, "print_lt_1", upstreams=[s5]),
    ]
    return pipes, PipeSystem(pipes, **options)


def figures(system):
    return {s.name: (s.items_in, s.items_out) for s in system.report().stages}


# --- the examples --------------------------------------------------------------------------


def test_the_PipeLine_toy_example_runs_on_process_workers():
    # Define pipeline
    pline = PipeLine()
    pline.add(Source(genRand, "source"))
    pline.add(Regulator(batch, "batcher"), buffer_size=10)
    pline.add(Transform(sumBatch, "sum"), n_processes=3)
    pline.add(Sink(print_out, "print"))
    # Build pipeline
    pline.build()
    # Run pipeline
    pline.run()
    pline.close()

    got = figures(pline)
    assert got["source"][1] == 10  # ten arrays of 10
    assert got["batcher"] == (10, 50)  # each array cut into five batches of 2
    assert got["sum"] == (50, 50)
    assert got["print"][0] == 50
    stage = pline.report().stage("sum")
    assert (stage.backend, stage.workers) == ("process", 3)


def test_the_PipeLine_toy_example_prints_each_sum(capsys):
    pline = toy_pipeline(backend="thread")
    pline.build()
    pline.run()
    pline.close()
    lines = capsys.readouterr().out.split()
    assert len(lines) == 50
    assert all(0 <= float(v) <= 2 for v in lines)


def test_the_PipeSystem_toy_example_runs_on_process_workers():
    pipes, psys = toy_system()
    # Build pipesystem
    psys.build()
    # Run pipesystem
    psys.run()
    psys.close()

    got = figures(psys)
    assert got["source1"][1] == 20  # two sources feed s1
    assert got["batcher"] == (20, 100)
    assert got["sum"] == (100, 100)  # three competing copies: one stage of 3 workers
    assert got["split"] == (100, 100)
    assert got["print_gt_1"][0] + got["print_lt_1"][0] == 100
    assert psys.report().stage("sum").workers == 3


def test_the_PipeSystem_split_sends_each_sum_to_one_side(capsys):
    _, psys = toy_system(backend="thread")
    psys.build()
    psys.run()
    psys.close()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 100
    for line in lines:
        side, value = line.split(" ", 1)[1].split()
        assert (float(value) > 1) == (side == "<")


def test_the_PipeSystem_example_as_printed_raises_its_numpy_error_at_close():
    # split reads batches of two numbers: `x > 1` is ambiguous, and that error must surface.
    _, psys = toy_system(split_reads_sums=False)
    psys.build()
    psys.run()
    with pytest.raises(ValueError, match="truth value of an array"):
        psys.close()


def test_segment_order_does_not_matter():
    results = []
    for seed in range(3):
        out = []
        s1, s2, s3 = Stream(), Stream(), Stream()
        pipes = [
            Source(lambda: iter(range(20)), "numbers", downstreams=[s1]),
            Transform(lambda x: x * 2, "double", upstreams=[s1], downstreams=[s2]),
            Transform(lambda x: x + 1, "plus1", upstreams=[s2], downstreams=[s3]),
            Sink(out.append, "keep", upstreams=[s3]),
        ]
        random.Random(seed).shuffle(pipes)
        psys = PipeSystem(pipes, backend="thread")
        psys.build()
        psys.run()
        psys.close()
        results.append(sorted(out))
    assert results == [[2 * x + 1 for x in range(20)]] * 3


def test_competing_readers_each_item_reaches_exactly_one():
    a, b = [], []
    s1 = Stream()
    pipes = [
        Source(lambda: iter(range(90)), "numbers", downstreams=[s1]),
        Sink(a.append, "a", upstreams=[s1]),
        Sink(a.append, "a", upstreams=[s1]),  # the same functor: one stage of 2 workers
        Sink(b.append, "b", upstreams=[s1]),
    ]
    psys = PipeSystem(pipes, backend="thread")
    psys.build()
    psys.run()
    psys.close()
    assert sorted(a + b) == list(range(90))
    assert (len(a), len(b)) == (60, 30)  # dealt in proportion to the readers' workers


def test_several_upstreams_give_one_argument_each():
    out = []
    s1, s2, s3 = Stream(), Stream(), Stream()
    pipes = [
        Source(lambda: iter(range(5)), "xs", downstreams=[s1]),
        Source(lambda: iter(range(100, 105)), "ys", downstreams=[s2]),
        Transform(lambda x, y: (x, y), "pair", upstreams=[s1, s2], downstreams=[s3]),
        Sink(out.append, "keep", upstreams=[s3]),
    ]
    psys = PipeSystem(pipes, backend="thread")
    psys.build()
    psys.run()
    psys.close()
    assert sorted(out) == [(i, 100 + i) for i in range(5)]


def test_sources_skip_None_and_stop_at_Sentinel_transforms_drop_None():
    out = []

    def source():
        yield from [1, None, 2, 3, Sentinel, 4]

    pline = PipeLine(backend="thread")
    pline.add(Source(source, "source"))
    pline.add(Transform(lambda x: None if x == 2 else x, "drop2"))
    pline.add(Sink(out.append, "keep"))
    pline.build()
    pline.run()
    pline.close()
    assert sorted(out) == [1, 3]


def test_a_regulator_may_accumulate_across_inputs():
    out = []

    def pairs():
        held = []
        while True:
            held.append((yield))
            if len(held) == 2:
                yield tuple(held)
                held = []

    pline = PipeLine(backend="thread")
    pline.add(Source(lambda: iter(range(6)), "numbers"))
    pline.add(Regulator(pairs, "pairs"))
    pline.add(Sink(out.append, "keep"))
    pline.build()
    pline.run()
    pline.close()
    assert out == [(0, 1), (2, 3), (4, 5)]


class Counter:
    """A stateful functor: ``local_init`` and ``local_term`` run once on its worker."""

    def local_init(self, path):
        self.path, self.count = path, 0

    def run(self, x):
        self.count += 1

    def local_term(self):
        with open(self.path, "a") as f:
            f.write(f"{self.count}\n")


def test_class_functors_get_init_kwargs_on_their_process_worker(tmp_path):
    path = tmp_path / "counts.txt"
    pline = PipeLine()
    pline.add(Source(lambda: iter(range(30)), "numbers"))
    pline.add(Sink(Counter(), "count", init_kwargs={"path": str(path)}), n_processes=2)
    pline.build()
    pline.run()
    pline.close()
    counts = [int(line) for line in path.read_text().split()]
    assert len(counts) == 2 and sum(counts) == 30


def test_ignored_exceptions_are_logged_and_skipped(caplog):
    out = []

    def picky(x):
        if x % 3 == 0:
            raise KeyError(x)
        return x

    pline = PipeLine(backend="thread")
    pline.add(Source(lambda: iter(range(9)), "numbers"))
    pline.add(Transform(picky, "picky"))
    pline.add(Sink(out.append, "keep"))
    pline.build(ignore_exceptions=[KeyError])
    with caplog.at_level(logging.WARNING, logger="minipipe"):
        pline.run()
        pline.close()
    assert sorted(out) == [1, 2, 4, 5, 7, 8]
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 3


def test_other_exceptions_reach_close_with_their_type():
    def bad(x):
        raise LookupError(f"no {x}")

    pline = PipeLine(backend="thread")
    pline.add(Source(lambda: iter(range(3)), "numbers"))
    pline.add(Transform(bad, "bad"))
    pline.build(ignore_exceptions=[KeyError])  # exact classes, as Minipipe compares them
    pline.run()
    with pytest.raises(LookupError, match="no 0"):
        pline.close()


def shout(x):
    logging.getLogger("user.segment").warning("saw %s", x)
    return x


def test_log_records_of_process_workers_reach_the_parent_handlers(caplog):
    pline = PipeLine()
    pline.add(Source(lambda: iter(range(3)), "numbers"))
    pline.add(Transform(shout, "shout"), n_processes=2)
    pline.build(log_lvl="INFO")
    with caplog.at_level(logging.INFO):
        pline.run()
        pline.close()
    saw = sorted(r.getMessage() for r in caplog.records if r.name == "user.segment")
    assert saw == ["saw 0", "saw 1", "saw 2"]
    minipipe = [r for r in caplog.records if r.name == "minipipe"]
    assert any(r.getMessage() == "End of stream" and r.pname == "numbers" for r in minipipe)
    assert any(r.getMessage() == "Local termination" for r in minipipe)


def test_monitor_logs_the_figures_of_the_run(caplog):
    pline = toy_pipeline(monitor=True, backend="thread")
    pline.build(log_lvl="INFO")
    with caplog.at_level(logging.INFO, logger="minipipe"):
        pline.run()
        pline.close()
    assert any("figures of the run" in r.getMessage() for r in caplog.records)


def test_reset_runs_the_system_again():
    out = []
    pline = PipeLine(backend="thread")
    pline.add(Source(lambda: iter(range(4)), "numbers"))
    pline.add(Sink(out.append, "keep"))
    pline.build()
    pline.run()
    pline.close()
    with pytest.raises(hr.HeadraceError, match="reset"):
        pline.run()
    pline.reset()
    pline.run()
    pline.close()
    assert sorted(out) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_diagram_names_every_segment():
    pipes, psys = toy_system()
    psys.build()
    dot = psys.diagram().source
    for name in ("source1", "source2", "batcher", "sum_0", "sum_1", "sum_2", "split"):
        assert f"[label={name}]" in dot
    assert dot.count("->") == 2 + 3 + 3 + 2
    with_streams = psys.diagram(draw_streams=True).source
    assert with_streams.count("shape=rectangle") == 5


def test_queue_types_and_bad_arguments():
    PipeLine(queue_type="multiprocessing.SimpleQueue")
    Stream(queue_type="multiprocessing.Queue")
    with pytest.raises(ValueError, match="queue_type"):
        PipeLine(queue_type="redis")
    with pytest.raises(ValueError, match="buffer_size"):
        Stream(buffer_size=0)
    with pytest.raises(ValueError, match="Source"):
        PipeLine().add(Source(genRand), n_processes=2)
    with pytest.raises(ValueError, match="log_lvl"):
        PipeSystem([]).build(log_lvl="LOUD")
    with pytest.raises(TypeError, match="Streams"):
        Transform(sumBatch, upstreams=["s1"])


class Interrupted(Exception):
    """What the test's signal handler raises in the main thread."""


def test_close_sees_a_signal_while_a_segment_is_busy():
    """`close` waits for the run in short steps, so a signal (Ctrl-C) reaches the program at
    once even while a segment is busy: sent to another thread here, so that only the main
    thread's own waking up can see it. A second `close` then still waits for the run to end
    (it returned at once while the run went on when `close` waited with `Thread.join`)."""
    release = threading.Event()
    out = []

    def slow(x):
        release.wait(10)
        return x

    def handler(signum, frame):
        raise Interrupted

    pline = PipeLine(backend="thread")
    pline.add(Source(lambda: iter(range(3)), "numbers"))
    pline.add(Transform(slow, "slow"))
    pline.add(Sink(out.append, "keep"))
    pline.build()
    previous = signal.signal(signal.SIGUSR1, handler)
    sender = threading.Thread(
        target=lambda: (time.sleep(0.3), signal.pthread_kill(threading.get_ident(), signal.SIGUSR1))
    )
    try:
        pline.run()
        sender.start()
        start = time.monotonic()
        with pytest.raises(Interrupted):
            pline.close()
        took = time.monotonic() - start
    finally:
        release.set()
        if sender.ident is not None:
            sender.join(5)
        signal.signal(signal.SIGUSR1, previous)
    assert took < 0.3 + 1.5, f"the signal was seen {took - 0.3:.2f} s late"
    pline.close()  # the segment is released: the run ends
    assert sorted(out) == [0, 1, 2]
