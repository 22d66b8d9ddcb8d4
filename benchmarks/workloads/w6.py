"""W6: time to the first result of a freshly built 2-stage process pipeline (ms).

In a fresh interpreter, after the imports: the clock starts before the pipeline (or pools) is
built and stops at its first result; the rest is drained and everything shut down outside the
clock. "first" is the program's first pipeline (it pays for any start-method server); "next" is
the median of the pipelines built after it in the same program.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

from .._core import Case, Metric, Params, Result, Workload, backend, expect, median

ITEMS = 100


def inc(x: int) -> int:
    return x + 1


def _finish(start: float, it: Iterator[Any], stages: int) -> float:
    """Take the first result, note the time, drain the rest and check them."""
    first = next(it)
    elapsed = time.perf_counter() - start
    rest = list(it)
    expect("W6", sorted([first, *rest]), list(range(stages, ITEMS + stages)))
    return elapsed


def headrace_first() -> float:
    import headrace as hr

    start = time.perf_counter()
    b = backend()
    stream = (
        hr.from_iterable(range(ITEMS)).map(inc, workers=2, backend=b).map(inc, workers=2, backend=b)
    )
    with stream.open() as run:
        return _finish(start, iter(run), 2)


def pool_first() -> float:
    import multiprocessing

    start = time.perf_counter()
    with multiprocessing.Pool(2) as one, multiprocessing.Pool(2) as two:
        return _finish(start, two.imap(inc, one.imap(inc, range(ITEMS))), 2)


def ppe_first(method: str) -> Callable[[], float]:
    def first() -> float:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context(method)
        start = time.perf_counter()
        with ExitStack() as stack:
            one, two = (
                stack.enter_context(ProcessPoolExecutor(2, mp_context=context)) for _ in range(2)
            )
            # two.map(...) would wait for all of stage 1: submit each result as it comes.
            results = (two.submit(inc, x).result() for x in one.map(inc, range(ITEMS)))
            return _finish(start, results, 2)

    return first


def mpire_first() -> float:
    from mpire import WorkerPool

    start = time.perf_counter()
    with WorkerPool(n_jobs=2) as one, WorkerPool(n_jobs=2) as two:
        return _finish(start, two.imap(inc, one.imap(inc, range(ITEMS)), iterable_len=ITEMS), 2)


def pypeln_first() -> float:
    import pypeln as pl

    start = time.perf_counter()
    stage = pl.process.map(inc, pl.process.map(inc, range(ITEMS), workers=2), workers=2)
    return _finish(start, iter(stage), 2)


def joblib_first() -> float:
    from joblib import Parallel, delayed

    start = time.perf_counter()
    results = Parallel(n_jobs=2, return_as="generator")(delayed(inc)(i) for i in range(ITEMS))
    return _finish(start, iter(results), 1)


class Ints:
    def __len__(self) -> int:
        return ITEMS

    def __getitem__(self, i: int) -> int:
        return inc(i)


def dataloader_first() -> float:
    from torch.utils.data import DataLoader

    start = time.perf_counter()
    return _finish(start, iter(DataLoader(Ints(), batch_size=None, num_workers=2)), 1)


def _case(key: str, system: str, settings: str, first: Callable[[], float], *needs: str) -> Case:
    def run(p: Params) -> Result:
        return {"first_s": first(), "next_s": [first() for _ in range(p["next"])]}

    kind = "headrace" if system == "headrace" else "peer"
    return Case(key, system, settings, run, needs=needs, kind=kind)


def figures(result: Result, params: Params) -> dict[str, float]:
    return {"first_ms": result["first_s"] * 1e3, "next_ms": median(result["next_s"]) * 1e3}


WORKLOAD = Workload(
    name="W6",
    title="time to the first result of a freshly built 2-stage process pipeline",
    module="w6",
    metrics=(
        Metric("first_ms", "first pipeline, ms", higher_is_better=False, digits=1),
        Metric("next_ms", "next ones, ms", higher_is_better=False, digits=1),
    ),
    full={"next": 5},
    quick={"next": 2},
    figures=figures,
    memory=False,
    cases=(
        _case(
            "headrace",
            "headrace",
            '2 x map(workers=2, backend="{backend}"), defaults',
            headrace_first,
        ),
        _case(
            "pool",
            "multiprocessing.Pool",
            "2 pools of 2 chained with imap; fork (default)",
            pool_first,
        ),
        _case(
            "ppe-forkserver",
            "ProcessPoolExecutor",
            "as below, with forkserver (safe with threads, as headrace's default is)",
            ppe_first("forkserver"),
        ),
        _case(
            "ppe",
            "ProcessPoolExecutor",
            "2 executors of 2: each result of the first's map submitted to the second; fork",
            ppe_first("fork"),
        ),
        _case("mpire", "mpire", "2 WorkerPools of 2 chained with imap; fork", mpire_first, "mpire"),
        _case("pypeln", "pypeln", "2 x process.map(workers=2)", pypeln_first, "pypeln"),
        _case(
            "joblib",
            "joblib",
            "1 stage: Parallel(n_jobs=2, return_as='generator'); loky keeps its workers",
            joblib_first,
            "joblib",
        ),
        _case(
            "dataloader",
            "torch DataLoader",
            "1 stage: num_workers=2, batch_size=None; fork",
            dataloader_first,
            "torch",
        ),
    ),
    notes=(f"{ITEMS} small ints; each stage adds 1.",),
)
