"""W5a and W5b: stream sampling, a stochastic mux of noisy samples buffered into batches.

The work and its configurations are those of ``benchmarks/w5_sampling.py`` (the stream-sampling
issue's script; see its docstring): 10 streamers of one-row noisy samples from a (500, 30)
array, a stochastic mux keeping 3 active with lifetimes of rate 64, buffered into batches of 128
rows. W5a samples in the consumer's thread; W5b in a background process. Each function times
itself, from building the iterator to the last batch, a background process's start included.
"""

from __future__ import annotations

from collections.abc import Callable

from .. import w5_sampling as w5
from .._core import Case, Metric, Params, Result, Workload


def _case(key: str, system: str, settings: str, rate: Callable[[int], float], *needs: str) -> Case:
    def run(p: Params) -> Result:
        rate(p["warm"])  # a start-method server, imports in a background process: paid once
        return {"batches_per_s": rate(p["n"])}

    kind = "headrace" if system == "headrace" else "peer"
    return Case(key, system, settings, run, needs=needs, kind=kind)


def figures(result: Result, params: Params) -> dict[str, float]:
    return {"batches_per_s": result["batches_per_s"]}


METRICS = (Metric("batches_per_s", "batches/s", higher_is_better=True, digits=0),)
FULL: Params = {"n": w5.N_BATCHES, "warm": w5.N_BATCHES // 10}
QUICK: Params = {"n": 300, "warm": 30}
NOTES = ("Configurations as in benchmarks/w5_sampling.py.",)

W5A = Workload(
    name="W5a",
    title="stream sampling in the consumer: stochastic mux (k=3, rate 64) -> batches of 128 rows",
    module="w5",
    metrics=METRICS,
    full=FULL,
    quick=QUICK,
    figures=figures,
    notes=NOTES,
    cases=(
        _case("headrace", "headrace", "StochasticMux(...).rebatch(128)", w5.headrace_inprocess),
        _case(
            "pescador",
            "pescador",
            "StochasticMux, buffer_stream(128, axis=0)",
            w5.pescador_inprocess,
            "pescador",
        ),
    ),
)

W5B = Workload(
    name="W5b",
    title="stream sampling in a background process: the same mux and batches, sent to the consumer",
    module="w5",
    metrics=METRICS,
    full=FULL,
    quick=QUICK,
    figures=figures,
    notes=NOTES,
    cases=(
        _case("headrace", "headrace", "ZMQStreamer(mux.rebatch(128))", w5.headrace_zmq, "zmq"),
        _case(
            "headrace-process",
            "headrace",
            "ProcessStreamer(mux.rebatch(128)): the process backend, arrays via shared memory",
            w5.headrace_process,
        ),
        _case(
            "pescador",
            "pescador",
            "ZMQStreamer(Streamer(buffer_stream, mux, 128)): buffering in the background",
            w5.pescador_zmq,
            "pescador",
        ),
    ),
)
