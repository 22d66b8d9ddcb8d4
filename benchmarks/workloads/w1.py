"""W1: 200,000 small ints through one map stage on 2 worker processes, ordered (items/s).

Measures the per-item cost of a process pool or pipeline: nearly all of it is transport.
"""

from __future__ import annotations

from typing import Any

from .._core import (
    RAY_SETTINGS,
    Case,
    Metric,
    Params,
    Workload,
    backend,
    expect,
    per_item_rate,
    ray_data,
    ray_started,
    timed_job,
)

#: Chunk sizes of the tuned configurations, swept over 250, 1,000, 2,500, 10,000 and 25,000
#: (DataLoader: 250, 1,000, 5,000) on this suite's 2-core machine: from 1,000 up, Pool and
#: ProcessPoolExecutor vary within the noise; larger chunks delay the first result.
POOL_CHUNK = 10_000
PPE_CHUNK = 10_000
DATALOADER_BATCH = 5_000
#: Size factor for the configurations that move one item at a time through a queue (4,000 to
#: 8,000 items/s here): 200,000 items would take up to a minute per run.
SLOW = 0.1


def inc(x: int) -> int:
    return x + 1


def check(n: int, out: Any) -> None:
    expect("W1", out, list(range(1, n + 1)))


def headrace_job(n: int) -> list[int]:
    import headrace as hr

    return hr.from_iterable(range(n)).map(inc, workers=2, backend=backend()).collect()


def ray_headrace_job(n: int) -> list[int]:
    import headrace as hr

    ray_started()
    stream = hr.from_iterable(range(n)).map(inc, workers=2, backend="process")
    return stream.collect(engine=hr.RayEngine())


def _inc_row(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": inc(row["id"])}


def _inc_batch(batch: dict[str, Any]) -> dict[str, Any]:
    return {"id": batch["id"] + 1}


def ray_data_job(batches: bool) -> Any:
    def job(n: int) -> list[int]:
        data = ray_data()
        ds = data.range(n)
        ds = ds.map_batches(_inc_batch) if batches else ds.map(_inc_row)
        return [int(row["id"]) for row in ds.iter_rows()]

    return job


def pool_job(chunksize: int) -> Any:
    def job(n: int) -> list[int]:
        import multiprocessing

        with multiprocessing.Pool(2) as pool:
            return list(pool.imap(inc, range(n), chunksize=chunksize))

    return job


def ppe_job(chunksize: int) -> Any:
    def job(n: int) -> list[int]:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(2) as ex:
            return list(ex.map(inc, range(n), chunksize=chunksize))

    return job


def joblib_job(n: int) -> list[int]:
    from joblib import Parallel, delayed

    return list(Parallel(n_jobs=2)(delayed(inc)(i) for i in range(n)))


def mpire_job(n: int) -> list[int]:
    from mpire import WorkerPool

    with WorkerPool(n_jobs=2) as pool:
        return list(pool.map(inc, range(n)))


def pypeln_job(n: int) -> list[int]:
    import pypeln as pl

    # pl.process.ordered sorts by insertion into a list: quadratic, minutes for 200,000 items.
    stage = pl.process.map(inc, range(n), workers=2)
    return [x for _, x in sorted(pl.process.to_iterable(stage, return_index=True))]


class Ints:
    """A map-style dataset: item i is inc(i)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return inc(i)


def dataloader_job(batch: int | None) -> Any:
    def job(n: int) -> list[int]:
        from torch.utils.data import DataLoader

        if batch is None:
            return list(DataLoader(Ints(n), batch_size=None, num_workers=2))
        loader = DataLoader(Ints(n), batch_size=batch, num_workers=2, collate_fn=list)
        return [x for chunk in loader for x in chunk]

    return job


def _case(key: str, system: str, settings: str, job: Any, *needs: str, **kw: Any) -> Case:
    kind = "headrace" if system == "headrace" else "peer"
    engine = "ray" if "ray" in needs else "local"
    return Case(
        key, system, settings, timed_job(job, check), needs=needs, kind=kind, engine=engine, **kw
    )


CASES = (
    _case("headrace", "headrace", 'map(workers=2, backend="{backend}"), defaults', headrace_job),
    Case(
        "headrace-ray",
        "headrace on Ray",
        f'map(workers=2, backend="process"), engine=hr.RayEngine(); {RAY_SETTINGS}',
        timed_job(ray_headrace_job, check),
        needs=("ray",),
        kind="headrace",
        engine="ray",
    ),
    _case(
        "ray-data",
        "Ray Data",
        f"range -> map (per row) -> iter_rows, preserve_order=True; {RAY_SETTINGS}",
        ray_data_job(False),
        "ray",
        scale=SLOW,
    ),
    _case(
        "ray-data-batches",
        "Ray Data",
        f"range -> map_batches (default size) -> iter_rows, preserve_order=True; {RAY_SETTINGS}",
        ray_data_job(True),
        "ray",
    ),
    _case(
        "pool",
        "multiprocessing.Pool",
        "imap, chunksize=1 (default); fork",
        pool_job(1),
    ),
    _case(
        "pool-tuned",
        "multiprocessing.Pool",
        f"imap, chunksize={POOL_CHUNK:,} (tuned); fork",
        pool_job(POOL_CHUNK),
    ),
    _case(
        "ppe",
        "ProcessPoolExecutor",
        "map, chunksize=1 (default); fork",
        ppe_job(1),
        scale=SLOW,
    ),
    _case(
        "ppe-tuned",
        "ProcessPoolExecutor",
        f"map, chunksize={PPE_CHUNK:,} (tuned); fork",
        ppe_job(PPE_CHUNK),
    ),
    _case(
        "joblib",
        "joblib",
        "Parallel(n_jobs=2), defaults (loky, batch_size='auto')",
        joblib_job,
        "joblib",
    ),
    _case(
        "mpire", "mpire", "WorkerPool(2).map, defaults (auto chunk size; fork)", mpire_job, "mpire"
    ),
    _case(
        "pypeln",
        "pypeln",
        "process.map(workers=2), defaults; results sorted by their index",
        pypeln_job,
        "pypeln",
        scale=SLOW,
    ),
    _case(
        "dataloader",
        "torch DataLoader",
        "num_workers=2, batch_size=None (per item, default collate); fork",
        dataloader_job(None),
        "torch",
        scale=SLOW,
    ),
    _case(
        "dataloader-tuned",
        "torch DataLoader",
        f"num_workers=2, batch_size={DATALOADER_BATCH:,}, collate_fn=list, flattened (tuned)",
        dataloader_job(DATALOADER_BATCH),
        "torch",
    ),
)


def _params(n: int) -> Params:
    return {"n": n, "warm": n // 10}


WORKLOAD = Workload(
    name="W1",
    title="200,000 small ints through one map stage, 2 worker processes, ordered",
    module="w1",
    metrics=(Metric("items_per_s", "M items/s", higher_is_better=True, scale=1e-6, digits=3),),
    full=_params(200_000),
    quick=_params(50_000),
    cases=CASES,
    figures=per_item_rate("items_per_s", "n"),
)
