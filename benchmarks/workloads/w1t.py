"""W1t: the W1 items (200,000 small ints, one map) on threads, and inline (items/s).

Measures the runner's per-item cost where no process boundary hides it: a thread pool of two
against `ThreadPoolExecutor.map`, mpire's threading pool and pypeln's thread stage, an inline
(fused) map, and the plain loop that bounds them all.
"""

from __future__ import annotations

from typing import Any

from .._core import Case, Metric, Params, Workload, expect, per_item_rate, timed_job

SLOW = 0.1


def inc(x: int) -> int:
    return x + 1


def check(n: int, out: Any) -> None:
    expect("W1t", out, list(range(1, n + 1)))


def loop_job(n: int) -> list[int]:
    return [inc(x) for x in range(n)]


def headrace_job(backend: str, workers: int) -> Any:
    def job(n: int) -> list[int]:
        import headrace as hr

        return hr.from_iterable(range(n)).map(inc, workers=workers, backend=backend).collect()

    return job


def tpe_job(n: int) -> list[int]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as ex:
        return list(ex.map(inc, range(n)))


def mpire_job(n: int) -> list[int]:
    from mpire import WorkerPool

    with WorkerPool(n_jobs=2, start_method="threading") as pool:
        return list(pool.map(inc, range(n)))


def pypeln_job(n: int) -> list[int]:
    import pypeln as pl

    stage = pl.thread.map(inc, range(n), workers=2)
    return [x for _, x in sorted(pl.thread.to_iterable(stage, return_index=True))]


def _case(key: str, system: str, settings: str, job: Any, *needs: str, **kw: Any) -> Case:
    return Case(key, system, settings, timed_job(job, check), needs=needs, **kw)


CASES = (
    _case(
        "headrace",
        "headrace",
        'map(workers=2, backend="thread"), defaults',
        headrace_job("thread", 2),
        kind="headrace",
    ),
    _case(
        "headrace-1",
        "headrace",
        'map(workers=1, backend="thread"), defaults',
        headrace_job("thread", 1),
        kind="headrace",
    ),
    _case(
        "headrace-inline",
        "headrace",
        'map(backend="inline"): fused into the source thread',
        headrace_job("inline", 1),
        kind="headrace",
    ),
    _case(
        "loop", "plain loop", "[inc(x) for x in range(n)], one thread", loop_job, kind="reference"
    ),
    _case("tpe", "ThreadPoolExecutor", "map, 2 threads, defaults", tpe_job, scale=SLOW),
    _case(
        "mpire",
        "mpire",
        'WorkerPool(2, start_method="threading").map, defaults',
        mpire_job,
        "mpire",
        scale=SLOW,
    ),
    _case(
        "pypeln",
        "pypeln",
        "thread.map(workers=2), defaults; results sorted by their index",
        pypeln_job,
        "pypeln",
        scale=SLOW,
    ),
)


def _params(n: int) -> Params:
    return {"n": n, "warm": n // 10}


WORKLOAD = Workload(
    name="W1t",
    title="200,000 small ints through one map stage on 2 threads (and inline), ordered",
    module="w1t",
    metrics=(Metric("items_per_s", "M items/s", higher_is_better=True, scale=1e-6, digits=3),),
    full=_params(200_000),
    quick=_params(50_000),
    cases=CASES,
    figures=per_item_rate("items_per_s", "n"),
    memory=False,
)
