"""W5, stream sampling: a stochastic mux of noisy samples buffered into batches.

Ten streamers of noisy samples (one row each, the seed document's ``noisy_samples`` generator)
from a (500, 30) array; a stochastic mux keeping 3 active with lifetimes of rate 64; buffered
into batches of 128 rows; 2,000 batches. Each function runs one configuration and returns
batches/s, timed from building the iterator to the last batch (a background process's start is
included):

- ``headrace_inprocess``: ``mux.rebatch(128)`` iterated in this thread;
- ``pescador_inprocess``: pescador 3, ``buffer_stream(mux, 128, axis=0)``;
- ``headrace_zmq``: the mux and the buffering in a background process, ``hr.ZMQStreamer``;
- ``pescador_zmq``: the same with ``pescador.ZMQStreamer`` (buffering in the background too,
  pescador's faster arrangement);
- ``headrace_process``: the same with ``hr.ProcessStreamer``: the stream on headrace's process
  backend (a ``transform`` stage with ``backend="process"``; arrays through shared memory).

Run: ``python benchmarks/w5_sampling.py [--batches N] [--repeats R] [--only NAME ...]``;
prints the median, min and max of R runs per configuration. Needs pyzmq for the ZeroMQ cases
and pescador for the pescador cases (those are skipped when absent).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

import headrace as hr

N_STREAMERS = 10
DATA_SHAPE = (500, 30)
N_ACTIVE = 3
RATE = 64
ROWS = 128
N_BATCHES = 2000
#: Rows per item: one noisy sample, buffered into batches of ROWS rows.
ROWS_PER_ITEM = 1
SIGMAS = np.linspace(0.1, 2.0, N_STREAMERS)


def noisy_samples(X: np.ndarray, Y: np.ndarray, batch_size: int = 16, sigma: float = 1.0):
    """The seed document's generator: an infinite stream of noisy samples (global RNG)."""
    n, d = X.shape
    while True:
        i = np.random.randint(0, n, size=batch_size)
        noise = sigma * np.random.randn(batch_size, d)
        yield dict(X=X[i] + noise, Y=Y[i])  # noqa: C408  (the seed's code)


def _data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal(DATA_SHAPE), rng.integers(0, 2, DATA_SHAPE[0])


def _headrace_batches(seed: int) -> hr.Streamer:
    X, Y = _data(seed)
    streamers = [hr.Streamer(noisy_samples, X, Y, ROWS_PER_ITEM, s) for s in SIGMAS]
    mux = hr.StochasticMux(streamers, N_ACTIVE, RATE, random_state=seed)
    return mux.rebatch(ROWS)


def _pescador_mux(seed: int) -> Any:
    import pescador

    X, Y = _data(seed)
    streamers = [pescador.Streamer(noisy_samples, X, Y, ROWS_PER_ITEM, s) for s in SIGMAS]
    return pescador.StochasticMux(streamers, N_ACTIVE, RATE, random_state=seed)


def _rate(make: Callable[[], Iterator[Any]], n_batches: int) -> float:
    start = time.perf_counter()
    batches = make()
    count = 0
    for batch in batches:
        assert batch["X"].shape == (ROWS, DATA_SHAPE[1])
        count += 1
    close = getattr(batches, "close", None)
    if close is not None:
        close()
    elapsed = time.perf_counter() - start
    assert count == n_batches, (count, n_batches)
    return count / elapsed


def headrace_inprocess(n_batches: int = N_BATCHES, seed: int = 0) -> float:
    """Batches/s of ``mux.rebatch(128)`` iterated in this thread."""
    return _rate(lambda: _headrace_batches(seed).iterate(n_batches), n_batches)


def pescador_inprocess(n_batches: int = N_BATCHES, seed: int = 0) -> float:
    """Batches/s of pescador 3's ``buffer_stream(mux, 128, axis=0)`` in this thread."""
    import pescador

    def make() -> Iterator[Any]:
        buffered = pescador.buffer_stream(_pescador_mux(seed), ROWS // ROWS_PER_ITEM, axis=0)
        return itertools.islice(buffered, n_batches)

    return _rate(make, n_batches)


def headrace_zmq(n_batches: int = N_BATCHES, seed: int = 0) -> float:
    """Batches/s with the mux and the buffering in a background process, over ZeroMQ."""
    return _rate(lambda: hr.ZMQStreamer(_headrace_batches(seed)).iterate(n_batches), n_batches)


def pescador_zmq(n_batches: int = N_BATCHES, seed: int = 0) -> float:
    """Batches/s of pescador's ZMQStreamer with the buffering in the background."""
    import pescador

    def make() -> Iterator[Any]:
        buffered = pescador.Streamer(
            pescador.buffer_stream, _pescador_mux(seed), ROWS // ROWS_PER_ITEM, axis=0
        )
        return pescador.ZMQStreamer(buffered)(max_iter=n_batches)

    return _rate(make, n_batches)


def headrace_process(n_batches: int = N_BATCHES, seed: int = 0) -> float:
    """Batches/s with the sampling in a worker of headrace's process backend."""
    return _rate(lambda: hr.ProcessStreamer(_headrace_batches(seed)).iterate(n_batches), n_batches)


#: Configuration name -> (function, module it needs besides headrace).
CASES: dict[str, tuple[Callable[..., float], str | None]] = {
    "headrace in-process": (headrace_inprocess, None),
    "pescador in-process": (pescador_inprocess, "pescador"),
    "headrace ZMQStreamer": (headrace_zmq, "zmq"),
    "pescador ZMQStreamer": (pescador_zmq, "pescador"),
    "headrace process backend": (headrace_process, None),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=N_BATCHES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=None, help="configuration names to run")
    args = parser.parse_args(argv)
    names = [n for n in CASES if args.only is None or any(o in n for o in args.only)]
    available = [n for n in names if CASES[n][1] is None or importlib.util.find_spec(CASES[n][1])]
    rates: dict[str, list[float]] = {n: [] for n in available}
    for _ in range(args.repeats):  # interleaved, so that a busy moment hits every case alike
        for name in available:
            rates[name].append(CASES[name][0](args.batches, seed=0))
    for name in names:
        if name not in rates:
            print(f"{name:26s} skipped ({CASES[name][1]} is not installed)")
            continue
        r = rates[name]
        print(
            f"{name:26s} median {statistics.median(r):8.1f} batches/s"
            f"  (min {min(r):.1f}, max {max(r):.1f}, {len(r)} runs)"
        )


if __name__ == "__main__":
    main()
