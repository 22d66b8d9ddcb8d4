"""The core pipeline: files -> decode and augment on worker processes -> batches -> training.

It writes a small dataset of .npz files (one sample each) into a temporary folder, then trains
a linear model on it for a few epochs. Each epoch is one run of the same stream: the files are
read, augmented and batched on two worker processes (each batch comes back whole, in order),
and fed to a training step in this process. PyTorch is not needed: a NumPy step of
least squares stands in for `optimizer.step()`.

Run: python examples/core_pipeline.py
"""

import tempfile
from pathlib import Path

import numpy as np

import headrace as hr

FEATURES = 8
W_TRUE = np.linspace(-2.0, 2.0, FEATURES).astype(np.float32)


def write_dataset(folder: Path, n: int) -> list[Path]:
    """n samples, one .npz file each: features ``x`` and target ``y``."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        x = rng.standard_normal(FEATURES).astype(np.float32)
        path = folder / f"sample-{i:05d}.npz"
        np.savez(path, x=x, y=np.float32(x @ W_TRUE))
        paths.append(path)
    return paths


def load(path: Path) -> dict[str, np.ndarray]:
    """Read one sample (runs on a worker process)."""
    with np.load(path) as data:
        return {"x": data["x"], "y": data["y"]}


def augment(sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Add a little noise; hr.rng() makes it the same whatever the number of workers."""
    noise = 0.01 * hr.rng().standard_normal(FEATURES).astype(np.float32)
    return {"x": sample["x"] + noise, "y": sample["y"]}


def train(paths: list[Path], epochs: int = 5, lr: float = 0.1) -> np.ndarray:
    stream = (
        hr.from_iterable(paths)
        .map(load, workers=2, backend="process")  # reading and decoding in parallel
        .map(augment, backend="inline")  # cheap: runs in the same worker processes
        .batch(32)  # {"x": (32, 8), "y": (32,)}, stacked in the workers too
        .prefetch(4)  # the next batches wait while a step runs
    )
    w = np.zeros(FEATURES, dtype=np.float32)
    for epoch in range(1, epochs + 1):
        losses = []
        with stream.open(seed=epoch) as run:
            for batch in run:
                error = batch["x"] @ w - batch["y"]
                w -= lr * batch["x"].T @ error / len(error)  # one training step
                losses.append(float(np.mean(error**2)))
            report = run.report()
        print(f"epoch {epoch}: loss {np.mean(losses):.4f} over {len(losses)} batches")
    print(report.table())
    return w


if __name__ == "__main__":  # process workers import this module: keep the work under the guard
    with tempfile.TemporaryDirectory(prefix="headrace-example-") as folder:
        paths = write_dataset(Path(folder), 512)
        w = train(paths)
    error = float(np.max(np.abs(w - W_TRUE)))
    print(f"learned {np.round(w, 2)}; largest error {error:.3f}")
    print("OK" if error < 0.1 else "NOT LEARNED")
