"""Mix ten noisy streams with a stochastic mux, buffer them into batches, and feed a pipeline.

Run: python examples/sampling_mux.py
"""

import numpy as np

import headrace as hr

rng = np.random.default_rng(0)
X = rng.standard_normal((500, 30))
Y = (X[:, 0] > 0).astype(np.int64)


def noisy_samples(X, Y, sigma):
    """One noisy row at a time, forever (a generator function: a Streamer restarts it)."""
    local = np.random.default_rng()
    while True:
        i = local.integers(len(X))
        yield {
            "X": X[i : i + 1] + sigma * local.standard_normal((1, X.shape[1])),
            "Y": Y[i : i + 1],
        }


streamers = [hr.Streamer(noisy_samples, X, Y, sigma) for sigma in np.linspace(0.1, 2.0, 10)]
# Three streamers active at a time, each for ~64 rows, then replaced by another one.
mux = hr.StochasticMux(streamers, 3, 64, random_state=0)

# In the consumer's thread: batches of exactly 128 rows.
for batch in mux.rebatch(128)(max_items=3):
    print("batch", batch["X"].shape, batch["Y"].shape)

# A mux is a source: its batches can feed stages running on several workers.
standardized = (
    hr.from_iterable(mux.rebatch(128).iterate(20))
    .map(lambda b: {**b, "X": (b["X"] - b["X"].mean(0)) / b["X"].std(0)}, workers=2)
    .collect()
)
print(
    len(standardized),
    "standardized batches; mean of the first:",
    round(float(standardized[0]["X"].mean()), 6),
)
