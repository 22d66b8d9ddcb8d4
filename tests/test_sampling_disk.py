"""hr.sample_npz / hr.sample_npy: random windows of rows from files on disk."""

from __future__ import annotations

import pickle

import numpy as np

import headrace as hr


def make_npz(path, n=50, tag=0):
    np.savez(path, X=np.arange(n * 3).reshape(n, 3) + 1000 * tag, Y=np.arange(n) + 1000 * tag)


def test_npz_windows_are_consecutive_rows_of_every_array(tmp_path) -> None:
    make_npz(tmp_path / "a.npz")
    for item in hr.sample_npz(tmp_path / "a.npz", 7, random_state=0)(max_items=50):
        start = int(item["Y"][0])
        assert item["Y"].tolist() == list(range(start, start + 7))
        assert (item["X"][:, 0] == 3 * item["Y"]).all()


def test_npz_offsets_cover_the_file_uniformly(tmp_path) -> None:
    make_npz(tmp_path / "a.npz", n=20)
    starts = [int(b["Y"][0]) for b in hr.sample_npz(tmp_path / "a.npz", 5, random_state=1)(16_000)]
    counts = np.bincount(starts, minlength=16)
    assert counts.min() > 800 and counts.max() < 1200  # 16 offsets, 1000 each expected


def test_npz_keys_and_copies(tmp_path) -> None:
    make_npz(tmp_path / "a.npz")
    item = next(iter(hr.sample_npz(tmp_path / "a.npz", 4, keys=["Y"])))
    assert list(item) == ["Y"] and item["Y"].base is None  # a copy: frees the archive sooner
    view = next(iter(hr.sample_npz(tmp_path / "a.npz", 4, copy=False)))
    assert view["Y"].base is not None


def test_npy_windows_come_from_memory_maps(tmp_path) -> None:
    np.save(tmp_path / "x.npy", np.arange(40.0).reshape(20, 2))
    np.save(tmp_path / "y.npy", np.arange(20))
    files = {"X": tmp_path / "x.npy", "Y": tmp_path / "y.npy"}
    item = next(iter(hr.sample_npy(files, 5, random_state=2)))
    assert not item["X"].flags.writeable  # a read-only view of the map
    assert (item["X"][:, 0] == 2 * item["Y"]).all()
    copied = next(iter(hr.sample_npy(files, 5, copy=True)))
    assert copied["X"].flags.writeable and type(copied["X"]) is np.ndarray


def test_samplers_are_reproducible_picklable_and_differ_per_activation(tmp_path) -> None:
    make_npz(tmp_path / "a.npz")
    a = hr.sample_npz(tmp_path / "a.npz", 3, random_state=5)
    b = pickle.loads(pickle.dumps(hr.sample_npz(tmp_path / "a.npz", 3, random_state=5)))
    first = [int(x["Y"][0]) for x in a(max_items=30)]
    assert first == [int(x["Y"][0]) for x in b(max_items=30)]
    assert first != [int(x["Y"][0]) for x in a(max_items=30)]  # the next activation differs


def test_a_mux_over_many_archives(tmp_path) -> None:
    paths = []
    for j in range(12):
        paths.append(tmp_path / f"f{j}.npz")
        make_npz(paths[-1], n=30, tag=j)
    samplers = [hr.sample_npz(p, 8, random_state=j) for j, p in enumerate(paths)]
    mux = hr.StochasticMux(samplers, 4, 10, random_state=0)
    batches = list(mux.rebatch(32)(max_items=100))
    assert {b["X"].shape for b in batches} == {(32, 3)}
    assert len({int(y) // 1000 for b in batches for y in b["Y"]}) == 12
