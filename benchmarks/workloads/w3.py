"""W3: 64 CPU-bound pure-Python tasks of about 30 ms on 2 workers (speedup over serial).

The serial row runs the same 64 calls in one process; a row's speedup is the serial median time
over its own time. 2.0 is the ceiling on 2 cores.
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
    median,
    ray_data,
    ray_started,
    timed_job,
)

#: Loop iterations of one task: about 30 ms on the suite's 2-core machine (AMD EPYC, Python
#: 3.11). The serial row reports what a task really took.
LOOPS = 650_000


def spin(i: int) -> int:
    """A CPU-bound task in pure Python (it holds the GIL throughout); returns ``i``."""
    s = i
    for k in range(LOOPS):
        s = (s * 31 + k) & 0xFFFF
    return i + (s & 0)


def check(n: int, out: Any) -> None:
    expect("W3", sorted(out), list(range(n)))


def serial_job(n: int) -> list[int]:
    return [spin(i) for i in range(n)]


def headrace_job(n: int) -> list[int]:
    import headrace as hr

    return hr.from_iterable(range(n)).map(spin, workers=2, backend=backend()).collect()


def ray_headrace_job(n: int) -> list[int]:
    import headrace as hr

    ray_started()
    stream = hr.from_iterable(range(n)).map(spin, workers=2, backend="process")
    return stream.collect(engine=hr.RayEngine())


def _spin_row(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": spin(int(row["id"]))}


def ray_data_job(n: int) -> list[int]:
    ds = ray_data().range(n).map(_spin_row)
    return [int(row["id"]) for row in ds.iter_rows()]


def pool_job(n: int) -> list[int]:
    import multiprocessing

    with multiprocessing.Pool(2) as pool:
        return list(pool.imap(spin, range(n)))


def ppe_job(n: int) -> list[int]:
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2) as ex:
        return list(ex.map(spin, range(n)))


def joblib_job(n: int) -> list[int]:
    from joblib import Parallel, delayed

    return list(Parallel(n_jobs=2)(delayed(spin)(i) for i in range(n)))


def mpire_job(n: int) -> list[int]:
    from mpire import WorkerPool

    with WorkerPool(n_jobs=2) as pool:
        return list(pool.map(spin, range(n)))


def pypeln_job(n: int) -> list[int]:
    import pypeln as pl

    return list(pl.process.map(spin, range(n), workers=2))


class Tasks:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return spin(i)


def dataloader_job(n: int) -> list[int]:
    from torch.utils.data import DataLoader

    return list(DataLoader(Tasks(n), batch_size=None, num_workers=2))


def _case(key: str, system: str, settings: str, job: Any, *needs: str) -> Case:
    kind = {"headrace": "headrace", "headrace on Ray": "headrace", "serial": "reference"}.get(
        system, "peer"
    )

    engine = "ray" if "ray" in needs else "local"
    return Case(key, system, settings, timed_job(job, check), needs=needs, kind=kind, engine=engine)


def finish(rows: list[dict[str, Any]], params: Params) -> None:
    """Speedup = the serial row's median seconds / each run's seconds."""
    serial = next((r for r in rows if r["key"] == "serial" and r["status"] == "ok"), None)
    if serial is None:
        return
    base = median([run["seconds"] for run in serial["runs"]])
    for row in rows:
        if row["status"] == "ok":
            row["values"]["speedup"] = [base / run["seconds"] for run in row["runs"]]
    serial["note"] = f"one task: {base / params['n'] * 1e3:.1f} ms"


WORKLOAD = Workload(
    name="W3",
    title="64 CPU-bound pure-Python tasks of ~30 ms on 2 workers",
    module="w3",
    metrics=(Metric("speedup", "speedup over serial", higher_is_better=True),),
    full={"n": 64, "warm": 4},
    quick={"n": 16, "warm": 2},
    figures=lambda result, params: {},
    finish=finish,
    memory=False,
    cases=(
        _case(
            "serial", "serial", "a list comprehension in one process (the reference)", serial_job
        ),
        _case(
            "headrace", "headrace", 'map(workers=2, backend="{backend}"), defaults', headrace_job
        ),
        _case(
            "headrace-ray",
            "headrace on Ray",
            f'map(workers=2, backend="process"), engine=hr.RayEngine(); {RAY_SETTINGS}',
            ray_headrace_job,
            "ray",
        ),
        _case(
            "ray-data",
            "Ray Data",
            f"range -> map (per row) -> iter_rows, preserve_order=True; {RAY_SETTINGS}",
            ray_data_job,
            "ray",
        ),
        _case("pool", "multiprocessing.Pool", "imap, chunksize=1 (default); fork", pool_job),
        _case("ppe", "ProcessPoolExecutor", "map, defaults; fork", ppe_job),
        _case("joblib", "joblib", "Parallel(n_jobs=2), defaults; loky", joblib_job, "joblib"),
        _case("mpire", "mpire", "WorkerPool(2).map, defaults; fork", mpire_job, "mpire"),
        _case(
            "pypeln",
            "pypeln",
            "process.map(workers=2), defaults (unordered)",
            pypeln_job,
            "pypeln",
        ),
        _case(
            "dataloader",
            "torch DataLoader",
            "num_workers=2, batch_size=None; fork",
            dataloader_job,
            "torch",
        ),
    ),
)
