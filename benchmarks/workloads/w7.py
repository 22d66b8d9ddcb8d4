"""W7: many tasks over one large shared input (ML-Ensemble's job): 2 workers, ordered results.

Every task computes a column block of ``X @ W`` over the whole input ``X`` (float64, 1,024
columns, about 1 GB in the full run), so every task reads every byte of the input. The figure is
the input bytes the tasks read per second (tasks x input size / seconds), from handing the input
to the system to having the whole product ``P`` in the parent. The input is made before the
clock starts, once per child, either as an ``.npy`` file opened with ``np.load(mmap_mode="r")``
("memmap" rows) or loaded into the parent's private memory ("in memory" rows): headrace copies
an in-memory input once into /dev/shm, joblib's auto-memmapping dumps it to a file, and
ProcessPoolExecutor pickles it with every task. Peak PSS is of the whole process tree.
BLAS runs one thread per process everywhere (2 workers on the suite's 2 cores).
"""

from __future__ import annotations

import os

# Before NumPy is imported by this child, so that workers inherit it too: one BLAS thread per
# process (joblib's loky sets the same in its workers; the others would oversubscribe).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from .._core import COLD_ENV, GB, Case, Metric, Params, Result, Workload, backend  # noqa: E402

COLUMNS = 1024
#: Columns of W per task: each task computes P[:, 4i:4i+4].
BLOCK = 4
#: Rows compared with a serial product after each run (the whole product is too slow to redo).
CHECK_ROWS = 512


def make_input(folder: Path, mb: int) -> Path:
    """An ``.npy`` file of about ``mb`` MiB of float64, written in slices (no private copy)."""
    import numpy as np

    rows = mb * 2**20 // (8 * COLUMNS)
    path = folder / "X.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype="f8", shape=(rows, COLUMNS))
    rng = np.random.default_rng(0)
    step = 8192
    for lo in range(0, rows, step):
        out[lo : lo + step] = rng.standard_normal((min(step, rows - lo), COLUMNS))
    out.flush()
    del out
    return path


def weights(tasks: int) -> Any:
    import numpy as np

    return np.random.default_rng(1).standard_normal((COLUMNS, BLOCK * tasks))


def block(X: Any, W: Any, i: int) -> Any:
    """Task i: columns 4i..4i+3 of X @ W (reads the whole input)."""
    return X @ W[:, BLOCK * i : BLOCK * (i + 1)]


def check(X: Any, W: Any, P: Any) -> None:
    import numpy as np

    if P.shape != (X.shape[0], W.shape[1]):
        raise AssertionError(f"W7: product of shape {P.shape}, wanted {(X.shape[0], W.shape[1])}")
    if not np.allclose(P[:CHECK_ROWS], np.asarray(X[:CHECK_ROWS]) @ W):
        raise AssertionError("W7: wrong product")


# --- the systems (each returns the whole product P, in the parent) ----------------------------


def headrace_fill(i: int, arrays: Any) -> None:
    arrays.P[:, BLOCK * i : BLOCK * (i + 1)] = block(arrays.X, arrays.W, i)


def headrace_job(X: Any, W: Any, tasks: int) -> Any:
    import headrace as hr

    with hr.ArrayJob(X=X, W=W, workers=2, backend=backend()) as job:
        P = job.output("P", (X.shape[0], W.shape[1]))
        job.map(headrace_fill, range(tasks))
    return P


def joblib_job(X: Any, W: Any, tasks: int) -> Any:
    import numpy as np
    from joblib import Parallel, delayed

    parallel = Parallel(n_jobs=2, return_as="generator")
    return np.hstack(list(parallel(delayed(block)(X, W, i) for i in range(tasks))))


def ppe_job(X: Any, W: Any, tasks: int) -> Any:
    from concurrent.futures import ProcessPoolExecutor

    import numpy as np

    with ProcessPoolExecutor(2) as ex:
        return np.hstack(list(ex.map(block, [X] * tasks, [W] * tasks, range(tasks))))


def _case_run(job: Callable[[Any, Any, int], Any], memmap: bool) -> Callable[[Params], Result]:
    def run(p: Params) -> Result:
        import numpy as np

        with tempfile.TemporaryDirectory(prefix="w7-") as folder:
            path = make_input(Path(folder), p["mb"])
            X = np.load(path, mmap_mode="r") if memmap else np.load(path)
            W = weights(p["n"])
            if os.environ.get(COLD_ENV) != "1":  # start-up paid once, outside the clock
                check(X, W[:, : 2 * BLOCK], job(X, W[:, : 2 * BLOCK], 2))
            start = time.perf_counter()
            P = job(X, W, p["n"])
            seconds = time.perf_counter() - start
            check(X, W, P)
            return {"seconds": seconds, "input_bytes": int(X.nbytes)}

    return run


def figures(result: Result, params: Params) -> dict[str, float]:
    return {"gb_per_s": params["n"] * result["input_bytes"] / GB / result["seconds"]}


def _case(
    key: str, system: str, settings: str, job: Any, memmap: bool, *needs: str, **kw: Any
) -> Case:
    kind = "headrace" if system == "headrace" else "peer"
    return Case(key, system, settings, _case_run(job, memmap), needs=needs, kind=kind, **kw)


#: ProcessPoolExecutor pickles the whole input with every task: run on a quarter of the job.
PPE_SCALE = 0.25

WORKLOAD = Workload(
    name="W7",
    title="16 tasks over one shared 1 GB float64 input (column blocks of X @ W), 2 workers",
    module="w7",
    metrics=(Metric("gb_per_s", "input GB/s", higher_is_better=True, digits=2),),
    full={"mb": 1024, "n": 16},
    quick={"mb": 128, "n": 8},
    figures=figures,
    notes=(
        "input GB/s: input bytes read by the tasks per second (tasks x input size / s).",
        "memmap: the input is an .npy file opened with np.load(mmap_mode='r'); "
        "in memory: np.load into the parent's private memory.",
    ),
    cases=(
        _case(
            "headrace",
            "headrace",
            'ArrayJob(X=X, workers=2, backend="{backend}"), X a memmap (mapped where it is)',
            headrace_job,
            True,
        ),
        _case(
            "headrace-inmemory",
            "headrace",
            'ArrayJob(X=X, workers=2, backend="{backend}"), X in memory (copied once to /dev/shm)',
            headrace_job,
            False,
        ),
        _case(
            "joblib",
            "joblib",
            'Parallel(n_jobs=2, return_as="generator"), defaults (auto-memmapping), X in memory',
            joblib_job,
            False,
            "joblib",
        ),
        _case(
            "joblib-memmap",
            "joblib",
            'Parallel(n_jobs=2, return_as="generator"), X a memmap (passed by file name)',
            joblib_job,
            True,
            "joblib",
        ),
        _case(
            "ppe",
            "ProcessPoolExecutor",
            "map, X in memory pickled with every task; fork",
            ppe_job,
            False,
            scale=PPE_SCALE,
        ),
    ),
)
