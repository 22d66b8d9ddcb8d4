"""Keras-style (x, y) tuples from a mux: what `model.fit(generator, steps_per_epoch=...)` takes.

Keras is not needed to run this: a few steps of least squares stand in for `model.fit`.
Run: python examples/sampling_keras.py
"""

import itertools

import numpy as np

import headrace as hr

rng = np.random.default_rng(0)
X = rng.standard_normal((300, 4)).astype(np.float32)
w_true = np.array([1.0, -2.0, 0.5, 3.0], dtype=np.float32)
Y = X @ w_true


def rows(X, Y, noise):
    local = np.random.default_rng()
    while True:
        i = local.integers(len(X))
        yield {"X": X[i : i + 1] + noise * local.standard_normal((1, 4)), "Y": Y[i : i + 1]}


mux = hr.StochasticMux([hr.Streamer(rows, X, Y, s) for s in (0.0, 0.05)], 2, None, random_state=0)
training = mux.rebatch(32).keras_tuples("X", "Y").cycle()  # model.fit(training, ...)

w = np.zeros(4, dtype=np.float32)
for x, y in itertools.islice(training, 300):
    w -= 0.05 * x.T @ (x @ w - y) / len(x)  # stand-in for one step of model.fit
training.close()
print("learned", np.round(w, 2), "true", w_true)
