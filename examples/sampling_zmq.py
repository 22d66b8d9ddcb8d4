"""Sample and buffer in a background process; receive the batches over ZeroMQ.

Needs pyzmq (pip install "headrace[zmq]"). No `if __name__ == "__main__"` guard is needed: the
background process is a fresh interpreter that never re-runs this script.

Run: python examples/sampling_zmq.py
"""

import itertools

import numpy as np

import headrace as hr

X = np.random.default_rng(0).standard_normal((500, 30))


def noisy_rows(X, sigma):
    rng = np.random.default_rng()
    while True:
        i = rng.integers(len(X))
        yield {"X": X[i : i + 1] + sigma * rng.standard_normal((1, X.shape[1]))}


mux = hr.StochasticMux(
    [hr.Streamer(noisy_rows, X, s) for s in (0.1, 0.5, 1.0)], 2, 64, random_state=0
)
background = hr.ZMQStreamer(mux.rebatch(128))  # the mux and the buffering run in the background

for batch in itertools.islice(background, 5):
    print("received", batch["X"].shape, batch["X"].dtype)
