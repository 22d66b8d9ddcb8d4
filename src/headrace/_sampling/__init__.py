"""Stream sampling, Pescador's domain: restartable streamers, muxes, samplers over files on
disk, and streamers run in a background process (over ZeroMQ, or on headrace's process backend).

A domain package: it builds on the core (`_errors`, `_stages`, `_streams`) and never imports
another domain (`_files`, `_arrays`); the core never imports it. Modules: `_streamer`
(`Streamer`), `_mux` (the mux family), `_samplers` (``.npz`` / ``.npy`` samplers), `_wire` (the
socket format), `_zmq` (`ZMQStreamer`), `_background` (`ProcessStreamer`, and what both background
streamers share: their pass API, the background loop, the supervisor of a background process).
"""

from __future__ import annotations

from ._background import ProcessStreamer
from ._mux import ChainMux, RoundRobinMux, ShuffledMux, StochasticMux
from ._samplers import sample_npy, sample_npz
from ._streamer import Streamer
from ._zmq import ZMQStreamer

__all__ = [
    "ChainMux",
    "ProcessStreamer",
    "RoundRobinMux",
    "ShuffledMux",
    "StochasticMux",
    "Streamer",
    "ZMQStreamer",
    "sample_npy",
    "sample_npz",
]
