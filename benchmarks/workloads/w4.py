"""W4: a file job, 20 files of 16 MB: read (np.load), x10, write (np.save), 2 workers.

Each case generates its input files in a fresh temporary folder (not timed), warms up on two
of them, then times the whole job over the rest, from the first read to the last output on
disk, and checks every output (not timed). headrace writes atomically (a temporary name, then
a rename; no fsync, its default) and keeps its manifest; the peers write straight to the final
name.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._core import Case, Metric, MiB, Params, Result, Workload, backend

WORKERS = 2
WARM = 2


def _load(path: str) -> Any:
    import numpy as np

    return np.load(path)


def _times_ten(data: Any) -> Any:
    return data * 10


def _save(data: Any, path: str) -> None:
    import numpy as np

    np.save(path, data)


def one_file(pair: tuple[str, str]) -> str:
    """The whole per-file job, for the peers: read, x10, write to the final name."""
    source, target = pair
    _save(_times_ten(_load(source)), target)
    return target


def _make_inputs(folder: Path, count: int, size: int) -> list[str]:
    import numpy as np

    paths = []
    for i in range(count):
        path = folder / f"in{i:03d}.npy"
        np.save(path, np.full(size // 8, float(i)))
        paths.append(str(path))
    return paths


def _check(outdir: Path, inputs: list[str]) -> None:
    import numpy as np

    for source in inputs:
        name = Path(source).name
        got = np.load(outdir / name, mmap_mode="r")
        expected = float(Path(source).stem[2:]) * 10
        if got[0] != expected or got[-1] != expected:
            raise AssertionError(f"W4: wrong output in {name}")


def _case_run(job: Callable[[list[str], Path], None]) -> Callable[[Params], Result]:
    def run(p: Params) -> Result:
        folder = Path(tempfile.mkdtemp(prefix="hr-bench-w4-"))
        try:
            inputs = _make_inputs(folder, WARM + p["n"], p["size"])
            warm, timed = inputs[:WARM], inputs[WARM:]
            job(warm, folder / "warm")
            outdir = folder / "out"
            start = time.perf_counter()
            job(timed, outdir)
            seconds = time.perf_counter() - start
            _check(outdir, timed)
            return {"seconds": seconds}
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    return run


def _pairs(inputs: list[str], outdir: Path) -> list[tuple[str, str]]:
    outdir.mkdir(parents=True, exist_ok=True)
    return [(s, str(outdir / Path(s).name)) for s in inputs]


def headrace_job(inputs: list[str], outdir: Path, on: str | None = None) -> None:
    import numpy as np

    import headrace as hr

    job = hr.FileJob(
        lambda data, **c: data * 10,
        read=np.load,
        write=lambda data, path, **c: np.save(path, data),
        workers=WORKERS,
        backend=on or backend(),
    )
    results = job.run(inputs, outdir)
    if any(r.status != "written" for r in results):
        raise AssertionError(f"W4: headrace: {[r for r in results if r.status != 'written'][:1]}")


def headrace_thread_job(inputs: list[str], outdir: Path) -> None:
    headrace_job(inputs, outdir, on="thread")


def pool_job(inputs: list[str], outdir: Path) -> None:
    import multiprocessing

    with multiprocessing.Pool(WORKERS) as pool:
        for _ in pool.imap_unordered(one_file, _pairs(inputs, outdir)):
            pass


def joblib_job(inputs: list[str], outdir: Path) -> None:
    import joblib

    joblib.Parallel(n_jobs=WORKERS)(joblib.delayed(one_file)(p) for p in _pairs(inputs, outdir))


def _times_ten_class() -> type:
    from bigmultipipe import BigMultiPipe

    class TimesTen(BigMultiPipe):  # type: ignore[misc]
        def file_read(self, in_name: str, **kwargs: Any) -> Any:
            return _load(in_name)

        def file_write(self, data: Any, outname: str, **kwargs: Any) -> str:
            _save(data, outname)
            return outname

        def data_process(self, data: Any, **kwargs: Any) -> Any:
            return data * 10

    TimesTen.__qualname__ = "TimesTen"
    return TimesTen


def __getattr__(name: str) -> Any:
    # bigmultipipe pickles its pipeline object: its class must be found here by name, and
    # bigmultipipe (a peer) must be imported only when the case runs.
    if name == "TimesTen":
        cls = _times_ten_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


def bigmultipipe_job(inputs: list[str], outdir: Path) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    cls = __getattr__("TimesTen")
    cls(outdir=str(outdir), outname_append="", num_processes=WORKERS).pipeline(inputs)


def figures(result: Result, params: Params) -> dict[str, float]:
    seconds = result["seconds"]
    return {
        "files_per_s": params["n"] / seconds,
        "mb_per_s": params["n"] * params["size"] / 1e6 / seconds,
    }


WORKLOAD = Workload(
    name="W4",
    title="file job: 20 files of 16 MB, np.load -> x10 -> np.save, 2 workers",
    module="w4",
    metrics=(
        Metric("files_per_s", "files/s", higher_is_better=True, digits=1),
        Metric("mb_per_s", "MB/s (input)", higher_is_better=True, digits=0),
    ),
    full={"n": 20, "size": 16 * MiB},
    quick={"n": 6, "size": 4 * MiB},
    figures=figures,
    memory=False,
    notes=(
        "headrace writes atomically (a temporary name, then a rename; no fsync, the default) "
        "and records a manifest; the peers write straight to the final name.",
    ),
    cases=(
        Case(
            "headrace-thread",
            "headrace",
            "FileJob(workers=2, backend='thread'), atomic writes",
            _case_run(headrace_thread_job),
            kind="headrace",
        ),
        Case(
            "headrace",
            "headrace",
            "FileJob(workers=2), atomic writes",
            _case_run(headrace_job),
            kind="headrace",
        ),
        Case(
            "pool",
            "multiprocessing.Pool",
            "imap_unordered, 2 processes (the default start method)",
            _case_run(pool_job),
        ),
        Case(
            "joblib",
            "joblib",
            "Parallel(n_jobs=2) (loky)",
            _case_run(joblib_job),
            needs=("joblib",),
        ),
        Case(
            "bigmultipipe",
            "bigmultipipe",
            "BigMultiPipe(num_processes=2) 0.2.0",
            _case_run(bigmultipipe_job),
            needs=("bigmultipipe",),
        ),
    ),
)
