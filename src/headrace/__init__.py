"""headrace: parallel, streaming data pipelines for numerical and machine-learning data.

A pipeline is a graph of stages; each stage runs a Python callable on a pool of workers;
bounded channels join the stages, so memory stays bounded and backpressure reaches the source.

Examples
--------
>>> import headrace as hr
>>> hr.from_iterable(range(5)).map(lambda x: x + 1, workers=2).batch(2).collect()
[[1, 2], [3, 4], [5]]
"""

from __future__ import annotations

from ._arrays import ArrayJob
from ._background import ProcessStreamer
from ._errors import (
    ClosedError,
    GraphError,
    HeadraceError,
    RemoteError,
    StageTimeoutError,
    WorkerCrashedError,
)
from ._monitor import Report
from ._mux import ChainMux, RoundRobinMux, ShuffledMux, StochasticMux
from ._run import Run
from ._samplers import sample_npy, sample_npz
from ._streamer import Streamer
from ._streams import Stream, from_iterable, merge, render, rng, run, to_dot, zip
from ._types import ErrorRecord, StageSnapshot
from ._wire import FrameError
from ._zmq import ZMQStreamer

__version__ = "0.1.0"

__all__ = [
    "ArrayJob",
    "ChainMux",
    "ClosedError",
    "ErrorRecord",
    "FrameError",
    "GraphError",
    "HeadraceError",
    "ProcessStreamer",
    "RemoteError",
    "Report",
    "RoundRobinMux",
    "Run",
    "ShuffledMux",
    "StageSnapshot",
    "StageTimeoutError",
    "StochasticMux",
    "Stream",
    "Streamer",
    "WorkerCrashedError",
    "ZMQStreamer",
    "from_iterable",
    "merge",
    "render",
    "rng",
    "run",
    "sample_npy",
    "sample_npz",
    "to_dot",
    "zip",
]
