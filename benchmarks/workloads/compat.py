"""C1 and C2: the seeds' toy pipelines, scaled up, on headrace's compat modules and the originals.

C1 is Minipipe's documented toy `PipeLine`: a source of ``n`` random arrays of 10, a regulator
cutting each into batches of 2, their sums on 3 processes, and a sink (counting, instead of
printing, so that the count can be checked). C2 is a 3-step Neuraxle
`SequentialQueuedPipeline` over ``n`` numbers with ``batch_size=25``. Each system runs with its
default settings and the same code, only the import differs.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np

from .._core import Case, Metric, Params, Result, Workload, expect, per_item_rate, timed_job

BATCH = 2  # Minipipe's toy regulator
MINIBATCH = 25  # issue 11: batch_size=25


# --- C1: Minipipe's toy PipeLine -----------------------------------------------------------


def gen_rand(n: int) -> Any:
    def gen() -> Iterator[np.ndarray]:
        for _ in range(n):
            yield np.random.rand(10)

    return gen


def batch(batch_size: int = BATCH) -> Iterator[Any]:
    x = yield
    for i in range(len(x) // batch_size):
        yield x[i * batch_size : (i + 1) * batch_size]


def sum_batch(x: np.ndarray) -> float:
    return float(x.sum())


class Count:
    """A sink that counts what it gets and writes the count to a file when its worker ends."""

    def local_init(self, path: str) -> None:
        self.path, self.count = path, 0

    def run(self, x: Any) -> None:
        self.count += 1

    def local_term(self) -> None:
        with open(self.path, "a") as f:
            f.write(f"{self.count}\n")


def toy_pipeline(module: Any, n: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "count")
        pline = module.PipeLine()
        pline.add(module.Source(gen_rand(n), "source"))
        pline.add(module.Regulator(batch, "batcher"), buffer_size=10)
        pline.add(module.Transform(sum_batch, "sum"), n_processes=3)
        pline.add(module.Sink(Count(), "count", init_kwargs={"path": path}))
        pline.build(log_lvl="WARNING")
        pline.run()
        pline.close()
        with open(path) as f:
            return sum(int(line) for line in f.read().split())


def headrace_minipipe(n: int) -> int:
    import headrace.compat.minipipe as minipipe

    return toy_pipeline(minipipe, n)


def minipipe_job(n: int) -> int:
    import minipipe

    return toy_pipeline(minipipe, n)


def check_c1(n: int, out: int) -> None:
    expect("C1", out, n * 10 // BATCH)


# --- C2: Neuraxle's 3-step SequentialQueuedPipeline ----------------------------------------


def step_class(base: Any, mixin: Any) -> Any:
    class Double(mixin, base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            mixin.__init__(self)

        def transform(self, data_inputs: Any) -> Any:
            return [x * 2 for x in data_inputs]

    return Double


def queued_pipeline(pipeline: Any, step: Any, n: int) -> int:
    p = pipeline([("a", step()), ("b", step()), ("c", step())], batch_size=MINIBATCH)
    return int(sum(p.transform(list(range(n)))))


def headrace_neuraxle(n: int) -> int:
    from headrace.compat import neuraxle

    step = step_class(neuraxle.BaseStep, neuraxle.NonFittableMixin)
    return queued_pipeline(neuraxle.SequentialQueuedPipeline, step, n)


def neuraxle_job(n: int) -> int:
    from neuraxle.base import BaseStep, NonFittableMixin
    from neuraxle.distributed.streaming import SequentialQueuedPipeline

    return queued_pipeline(SequentialQueuedPipeline, step_class(BaseStep, NonFittableMixin), n)


def check_c2(n: int, out: int) -> None:
    expect("C2", out, 8 * n * (n - 1) // 2)  # n a multiple of 25: no padding


# ---------------------------------------------------------------------------------------------


def _case(key: str, system: str, settings: str, job: Any, check: Any, *needs: str) -> Case:
    kind = "headrace" if system.startswith("headrace") else "peer"

    def run(p: Params) -> Result:
        return timed_job(job, check)(p)

    return Case(key, system, settings, run, needs=needs, kind=kind)


C1 = Workload(
    name="C1",
    title="Minipipe's toy PipeLine: source -> regulator(batches of 2) -> sum x3 processes -> sink",
    module="compat",
    metrics=(Metric("arrays_per_s", "arrays/s", higher_is_better=True, digits=0),),
    full={"n": 10_000, "warm": 100},
    quick={"n": 1_000, "warm": 50},
    figures=per_item_rate("arrays_per_s", "n"),
    cases=(
        _case(
            "headrace",
            "headrace.compat.minipipe",
            "the same code, import changed; defaults (process workers)",
            headrace_minipipe,
            check_c1,
        ),
        _case(
            "minipipe",
            "minipipe 0.1.9",
            "defaults (a process per segment copy, multiprocessing.Queue(3/10))",
            minipipe_job,
            check_c1,
            "minipipe",
        ),
    ),
)

C2 = Workload(
    name="C2",
    title="Neuraxle's SequentialQueuedPipeline: 3 steps, batch_size=25, defaults",
    module="compat",
    metrics=(Metric("items_per_s", "items/s", higher_is_better=True, digits=0),),
    full={"n": 10_000, "warm": 100},
    quick={"n": 1_000, "warm": 50},
    figures=per_item_rate("items_per_s", "n"),
    cases=(
        _case(
            "headrace",
            "headrace.compat.neuraxle",
            "the same code, import changed; defaults (1 thread per step)",
            headrace_neuraxle,
            check_c2,
        ),
        _case(
            "neuraxle",
            "neuraxle 0.8.1",
            "defaults (1 thread per step); installed with --no-deps",
            neuraxle_job,
            check_c2,
            "neuraxle",
        ),
    ),
)
