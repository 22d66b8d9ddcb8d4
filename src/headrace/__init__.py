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

import importlib
from typing import TYPE_CHECKING, Any

from ._errors import (
    ClosedError,
    FrameError,
    GraphError,
    HeadraceError,
    RemoteError,
    SerializationError,
    StageTimeoutError,
    WorkerCrashedError,
)

if TYPE_CHECKING:
    from ._arrays import ArrayJob
    from ._backends._ray import RayEngine
    from ._files import FileJob, FileResult, FileStep
    from ._monitor import Report
    from ._records import ErrorRecord, StageSnapshot
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

#: Where each public name lives. They are imported on first use, so ``import headrace`` is
#: quick and a process worker (which imports the package) starts without the domains.
_LAZY = {
    "ArrayJob": "_arrays",
    "ErrorRecord": "_records",
    "FileJob": "_files",
    "FileResult": "_files",
    "FileStep": "_files",
    "RayEngine": "_backends._ray",
    "Report": "_monitor",
    "Run": "_run",
    "StageSnapshot": "_records",
    **dict.fromkeys(
        [
            "ChainMux",
            "ProcessStreamer",
            "RoundRobinMux",
            "ShuffledMux",
            "StochasticMux",
            "Streamer",
            "ZMQStreamer",
            "sample_npy",
            "sample_npz",
        ],
        "_sampling",
    ),
    **dict.fromkeys(
        ["Stream", "from_iterable", "merge", "render", "rng", "run", "to_dot", "zip"], "_streams"
    ),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'headrace' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups do not come here
    return value


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])


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
    "SerializationError",
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
