"""Physical references: what moving 8 MiB costs on this machine, whatever the library.

memcpy (NumPy copy into a touched buffer), a copy into freshly mapped memory (which pays its page
faults, as a transport that allocates per item does), pickle dumps + loads of an 8 MiB float64 array
(in-band, highest protocol), and 8 MiB of bytes through a ``multiprocessing.Pipe`` from another
process. Each is the median of ``repeats`` transfers after a warm-up.
"""

from __future__ import annotations

import mmap
import multiprocessing
import pickle
import time
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from .._core import GB, Case, Metric, MiB, Params, Result, Workload, median
from ..report import REFERENCES

SIZE = 8 * MiB


def _timed(fn: Any, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return median(times)


def _copy_to_fresh_pages(src: np.ndarray) -> None:
    """Copy into newly mapped memory and unmap it (``src.copy()`` would reuse freed pages)."""
    region = mmap.mmap(-1, SIZE)
    dst = np.frombuffer(region, dtype=src.dtype)
    np.copyto(dst, src)
    del dst
    region.close()


def _send(conn: Connection, count: int) -> None:
    payload = np.random.default_rng(0).bytes(SIZE)
    for _ in range(count):
        conn.send_bytes(payload)
    conn.close()


def pipe_seconds(repeats: int) -> float:
    receiver, sender = multiprocessing.Pipe()
    process = multiprocessing.Process(target=_send, args=(sender, repeats + 1))
    process.start()
    sender.close()
    try:
        return _timed(receiver.recv_bytes, repeats)
    finally:
        receiver.close()
        process.join()


def run(p: Params) -> Result:
    src = np.random.default_rng(0).random(SIZE // 8)
    dst = np.empty_like(src)
    dst.fill(0)
    repeats = p["repeats"]
    return {
        "memcpy_s": _timed(lambda: np.copyto(dst, src), repeats),
        "fresh_s": _timed(lambda: _copy_to_fresh_pages(src), repeats),
        "pickle_s": _timed(
            lambda: pickle.loads(pickle.dumps(src, protocol=pickle.HIGHEST_PROTOCOL)), repeats
        ),
        "pipe_s": pipe_seconds(repeats),
    }


NAMES = REFERENCES


def figures(result: Result, params: Params) -> dict[str, float]:
    out = {}
    for name in NAMES:
        seconds = result[f"{name}_s"]
        out[f"{name}_ms"] = seconds * 1e3
        out[f"{name}_gb_per_s"] = SIZE / GB / seconds
    return out


WORKLOAD = Workload(
    name="REF",
    title="physical references: moving 8 MiB",
    module="references",
    metrics=tuple(
        m
        for name in NAMES
        for m in (
            Metric(f"{name}_ms", f"{name} ms", higher_is_better=False, digits=2),
            Metric(f"{name}_gb_per_s", f"{name} GB/s", higher_is_better=True),
        )
    ),
    full={"repeats": 20},
    quick={"repeats": 5},
    figures=figures,
    memory=False,
    cases=(Case("reference", "this machine", "", run, kind="reference"),),
)
