"""stream.to_torch(): a PyTorch IterableDataset over a stream (needs torch)."""

from __future__ import annotations

import numpy as np
import pytest

import headrace as hr

torch = pytest.importorskip("torch")


def items(n):
    for i in range(n):
        yield {"x": np.full(3, i, dtype=np.float32), "y": np.int64(i), "name": f"item{i}"}


def test_arrays_become_tensors_and_the_rest_stays() -> None:
    dataset = hr.from_iterable(hr.Streamer(items, 5)).to_torch()
    assert isinstance(dataset, torch.utils.data.IterableDataset)
    got = list(dataset)
    assert [int(d["y"]) for d in got] == list(range(5))
    assert isinstance(got[2]["x"], torch.Tensor) and got[2]["x"].dtype == torch.float32
    assert got[2]["name"] == "item2"
    assert len(list(dataset)) == 5  # each iteration is a new run


def test_a_dataloader_over_batches() -> None:
    stream = hr.from_iterable(hr.Streamer(items, 10)).map(lambda d: d["x"], workers=2).batch(4)
    loader = torch.utils.data.DataLoader(stream.to_torch(), batch_size=None)
    shapes = [tuple(b.shape) for b in loader]
    assert shapes == [(4, 3), (4, 3), (2, 3)]


def test_tensors_false_and_read_only_arrays() -> None:
    frozen = np.arange(4.0)
    frozen.flags.writeable = False
    assert isinstance(next(iter(hr.from_iterable([frozen]).to_torch(tensors=False))), np.ndarray)
    tensor = next(iter(hr.from_iterable([frozen]).to_torch()))
    assert tensor.tolist() == [0.0, 1.0, 2.0, 3.0]
    big_endian = np.arange(3, dtype=">i4")
    assert next(iter(hr.from_iterable([big_endian]).to_torch())).tolist() == [0, 1, 2]


def test_run_options_are_checked_when_the_dataset_is_made() -> None:
    with pytest.raises(TypeError):
        hr.from_iterable([1]).to_torch(bogus=True)
    values = [float(v) for v in hr.from_iterable(range(3)).map(float).to_torch(seed=3)]
    assert values == [0.0, 1.0, 2.0]


def test_several_dataloader_workers_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a DataLoader worker of several, iterating would repeat the stream in each one."""

    class Info:
        num_workers = 2

    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: Info())
    with pytest.raises(RuntimeError, match="num_workers=0"):
        list(hr.from_iterable(range(4)).to_torch())


def test_one_dataloader_worker_process_runs_the_stream() -> None:
    loader = torch.utils.data.DataLoader(
        hr.from_iterable(range(6)).batch(3).to_torch(),
        batch_size=None,
        num_workers=1,
        multiprocessing_context="spawn",
    )
    it = iter(loader)
    try:
        assert list(it) == [[0, 1, 2], [3, 4, 5]]
    finally:
        del it
