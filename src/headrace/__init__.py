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
from ._backends._ray import RayEngine
from ._errors import (
    ClosedError,
    FrameError,
    GraphError,
    HeadraceError,
    RemoteError,
    StageTimeoutError,
    WorkerCrashedError,
)
from ._files import FileJob, FileResult, FileStep
from ._monitor import Report
from ._run import Run
from ._sampling import (
    ChainMux,
    ProcessStreamer,
    RoundRobinMux,
    ShuffledMux,
    StochasticMux,
    Streamer,
    ZMQStreamer,
    sample_npy,
    sample_npz,
)
from ._streams import Stream, from_iterable, merge, render, rng, run, to_dot, zip
from ._types import ErrorRecord, StageSnapshot

__version__ = "0.1.0"

__all__ = [
    "ArrayJob",
    "ChainMux",
    "ClosedError",
    "ErrorRecord",
    "FileJob",
    "FileResult",
    "FileStep",
    "FrameError",
    "GraphError",
    "HeadraceError",
    "ProcessStreamer",
    "RayEngine",
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
