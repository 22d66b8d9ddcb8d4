"""Sample windows of rows from many .npz archives and .npy memory maps.

Run: python examples/sampling_disk.py
"""

import os
import tempfile

import numpy as np

import headrace as hr

with tempfile.TemporaryDirectory() as tmp:
    rng = np.random.default_rng(0)
    archives = []
    for song in range(8):  # one archive per recording: features X and labels Y
        path = os.path.join(tmp, f"song{song}.npz")
        np.savez(path, X=rng.standard_normal((200, 16)), Y=np.full(200, song))
        archives.append(path)

    # 16 consecutive rows at a random offset per item; 4 archives in memory at a time.
    samplers = [hr.sample_npz(path, 16) for path in archives]
    mux = hr.StochasticMux(samplers, 4, 16, random_state=1)
    for batch in mux.rebatch(64)(max_items=3):
        print("npz batch", batch["X"].shape, "songs:", sorted(set(batch["Y"].tolist())))

    # .npy files are memory-mapped: only the rows read are loaded.
    np.save(os.path.join(tmp, "x.npy"), rng.standard_normal((10_000, 16)))
    np.save(os.path.join(tmp, "y.npy"), rng.integers(0, 2, 10_000))
    files = {"X": os.path.join(tmp, "x.npy"), "Y": os.path.join(tmp, "y.npy")}
    window = next(iter(hr.sample_npy(files, 32, random_state=2)))
    print("npy window", window["X"].shape, window["Y"].shape)
