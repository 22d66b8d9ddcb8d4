"""W2a and W2b: 8 MiB arrays between the parent and 2 worker processes (GB/s, peak PSS).

W2a: 200 arrays made by the workers, read by the parent. W2b: 200 arrays made by the parent
(the source), sent to the workers, which return their sum. Both measure how arrays cross a
process boundary: pickled through a pipe, or through shared memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .._core import (
    GB,
    RAY_SETTINGS,
    Case,
    Metric,
    MiB,
    Params,
    Result,
    Workload,
    backend,
    expect,
    ray_data,
    ray_started,
    timed_job,
)

ARRAY_BYTES = 8 * MiB
#: float64 elements in one 8 MiB array.
ELEMENTS = ARRAY_BYTES // 8
#: Elements between two reads: one per 4 KiB page, so that the consumer touches every page.
PAGE_STRIDE = 4096 // 8
#: Futures in flight in the bounded ProcessPoolExecutor of W2b: two per worker keeps both busy.
PPE_WINDOW = 4
#: pypeln's bounded configuration: a queue of 4 items per stage.
PYPELN_MAXSIZE = 4


def make_array(i: int) -> np.ndarray:
    return np.full(ELEMENTS, i, dtype=np.float64)


def read(a: Any) -> float:
    """What the W2a consumer does with an array: read one value per page."""
    return float(np.asarray(a)[::PAGE_STRIDE].sum())


def total(a: np.ndarray) -> float:
    """What a W2b worker does with an array."""
    return float(a.sum())


def arrays(n: int) -> Iterator[np.ndarray]:
    """The W2b source: arrays made one at a time in the parent."""
    for i in range(n):
        yield make_array(i)


def check_a(n: int, out: float) -> None:
    expect("W2a", out, float(ELEMENTS // PAGE_STRIDE * (n * (n - 1) // 2)))


def check_b(n: int, out: float) -> None:
    expect("W2b", out, float(ELEMENTS * (n * (n - 1) // 2)))


# ---------------------------------------------------------------------------------------------
# W2a: arrays made by the workers


def a_headrace(n: int) -> float:
    import headrace as hr

    stream = hr.from_iterable(range(n)).map(make_array, workers=2, backend=backend())
    return sum(read(a) for a in stream)


def a_headrace_ray(n: int) -> float:
    import headrace as hr

    ray_started()
    stream = hr.from_iterable(range(n)).map(make_array, workers=2, backend="process")
    with stream.open(engine=hr.RayEngine()) as run:
        return sum(read(a) for a in run)


def _array_row(row: dict[str, Any]) -> dict[str, Any]:
    return {"a": make_array(int(row["id"]))}


def a_ray_data(n: int) -> float:
    ds = ray_data().range(n).map(_array_row)
    return sum(read(row["a"]) for row in ds.iter_rows())


def a_pool(n: int) -> float:
    import multiprocessing

    with multiprocessing.Pool(2) as pool:
        return sum(read(a) for a in pool.imap(make_array, range(n)))


def a_ppe(n: int) -> float:
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2) as ex:
        return sum(read(a) for a in ex.map(make_array, range(n)))


def a_joblib(n: int) -> float:
    from joblib import Parallel, delayed

    results = Parallel(n_jobs=2, return_as="generator")(delayed(make_array)(i) for i in range(n))
    return sum(read(a) for a in results)


def a_mpire(n: int) -> float:
    from mpire import WorkerPool

    with WorkerPool(n_jobs=2) as pool:
        return sum(read(a) for a in pool.imap(make_array, range(n)))


def a_pypeln(n: int) -> float:
    import pypeln as pl

    return sum(read(a) for a in pl.process.map(make_array, range(n), workers=2))


class Arrays:
    """A map-style dataset: item i is make_array(i)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        return make_array(i)


def a_dataloader(n: int) -> float:
    from torch.utils.data import DataLoader

    return sum(read(t.numpy()) for t in DataLoader(Arrays(n), batch_size=None, num_workers=2))


def _dicts(n: int) -> Iterator[dict[str, np.ndarray]]:
    for i in range(n):
        yield {"x": make_array(i)}


def a_pescador(n: int) -> float:
    import pescador

    streamer = pescador.ZMQStreamer(pescador.Streamer(_dicts, n))
    return sum(read(d["x"]) for d in streamer)


# ---------------------------------------------------------------------------------------------
# W2b: arrays sent to the workers


def b_headrace(n: int) -> float:
    import headrace as hr

    return sum(hr.from_iterable(arrays(n)).map(total, workers=2, backend=backend()))


def b_pool(n: int) -> float:
    import multiprocessing

    with multiprocessing.Pool(2) as pool:
        return sum(pool.imap(total, arrays(n)))


def b_ppe(n: int) -> float:
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2) as ex:
        return sum(ex.map(total, arrays(n)))


def b_ppe_window(n: int) -> float:
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    result = 0.0
    with ProcessPoolExecutor(2) as ex:
        pending: set[Any] = set()
        for a in arrays(n):
            if len(pending) >= PPE_WINDOW:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                result += sum(f.result() for f in done)
            pending.add(ex.submit(total, a))
        return result + sum(f.result() for f in pending)


def b_joblib(n: int) -> float:
    from joblib import Parallel, delayed

    return sum(Parallel(n_jobs=2, return_as="generator")(delayed(total)(a) for a in arrays(n)))


def b_mpire(n: int) -> float:
    from mpire import WorkerPool

    with WorkerPool(n_jobs=2) as pool:
        return sum(pool.imap(total, arrays(n)))


def b_pypeln(maxsize: int) -> Any:
    def job(n: int) -> float:
        import pypeln as pl

        return sum(pl.process.map(total, arrays(n), workers=2, maxsize=maxsize))

    return job


# ---------------------------------------------------------------------------------------------


def _case(check: Any, key: str, system: str, settings: str, job: Any, *needs: str) -> Case:
    kind = "headrace" if system.startswith("headrace") else "peer"
    engine = "ray" if "ray" in needs else "local"
    return Case(key, system, settings, timed_job(job, check), needs=needs, kind=kind, engine=engine)


def figures(result: Result, params: Params) -> dict[str, float]:
    return {"gb_per_s": params["n"] * ARRAY_BYTES / GB / result["seconds"]}


def _params(n: int) -> Params:
    return {"n": n, "warm": max(n // 10, 4)}


METRICS = (Metric("gb_per_s", "GB/s", higher_is_better=True),)
HEADRACE = 'map(workers=2, backend="{backend}"), defaults'

W2A = Workload(
    name="W2a",
    title="200 arrays of 8 MiB made by 2 worker processes, read by the consumer",
    module="w2",
    metrics=METRICS,
    full=_params(200),
    quick=_params(24),
    figures=figures,
    cases=tuple(
        _case(check_a, *spec)
        for spec in (
            ("headrace", "headrace", HEADRACE, a_headrace),
            (
                "headrace-ray",
                "headrace on Ray",
                f'map(workers=2, backend="process"), engine=hr.RayEngine(); {RAY_SETTINGS}',
                a_headrace_ray,
                "ray",
            ),
            (
                "ray-data",
                "Ray Data",
                f"range -> map (per row) -> iter_rows, preserve_order=True; {RAY_SETTINGS}",
                a_ray_data,
                "ray",
            ),
            ("pool", "multiprocessing.Pool", "imap, chunksize=1 (default); fork", a_pool),
            ("ppe", "ProcessPoolExecutor", "map, defaults; fork", a_ppe),
            (
                "joblib",
                "joblib",
                "Parallel(n_jobs=2, return_as='generator'); loky",
                a_joblib,
                "joblib",
            ),
            ("mpire", "mpire", "WorkerPool(2).imap, defaults; fork", a_mpire, "mpire"),
            ("pypeln", "pypeln", "process.map(workers=2), defaults", a_pypeln, "pypeln"),
            (
                "dataloader",
                "torch DataLoader",
                "num_workers=2, batch_size=None: tensors through shared memory; fork",
                a_dataloader,
                "torch",
            ),
            (
                "pescador",
                "pescador",
                "ZMQStreamer: 1 worker process (its only form), copy=False",
                a_pescador,
                "pescador",
            ),
        )
    ),
    notes=("The consumer reads one float64 per 4 KiB page of every array.",),
)

W2B = Workload(
    name="W2b",
    title="200 arrays of 8 MiB sent by the source to 2 worker processes that return their sum",
    module="w2",
    metrics=METRICS,
    full=_params(200),
    quick=_params(24),
    figures=figures,
    cases=tuple(
        _case(check_b, *spec)
        for spec in (
            ("headrace", "headrace", HEADRACE, b_headrace),
            ("pool", "multiprocessing.Pool", "imap, chunksize=1 (default); fork", b_pool),
            (
                "ppe",
                "ProcessPoolExecutor",
                "map, defaults (submits every item at once); fork",
                b_ppe,
            ),
            (
                "ppe-window",
                "ProcessPoolExecutor",
                f"submit with at most {PPE_WINDOW} futures in flight (tuned); fork",
                b_ppe_window,
            ),
            (
                "joblib",
                "joblib",
                "Parallel(n_jobs=2, return_as='generator'): arrays memory-mapped (default)",
                b_joblib,
                "joblib",
            ),
            ("mpire", "mpire", "WorkerPool(2).imap, defaults; fork", b_mpire, "mpire"),
            (
                "pypeln",
                "pypeln",
                "process.map(workers=2), maxsize=0 (default)",
                b_pypeln(0),
                "pypeln",
            ),
            (
                "pypeln-bounded",
                "pypeln",
                f"process.map(workers=2, maxsize={PYPELN_MAXSIZE}) (bounded)",
                b_pypeln(PYPELN_MAXSIZE),
                "pypeln",
            ),
        )
    ),
    notes=("Not for DataLoader or pescador: neither sends data from the consumer to workers.",),
)
