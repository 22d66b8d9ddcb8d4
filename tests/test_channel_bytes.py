"""A channel that counts bytes of array data hands them on with each chunk (`get_sized`), so
that the stage taking the chunk does not scan its items again; the counts stay exact when the
channel joins chunks or splits one, and a process worker counts its own outputs."""

from __future__ import annotations

from typing import Any

import numpy as np

import headrace as hr
from headrace._transport import END, Channel, RunState, chunk_nbytes

KIB = 1024


def bounded() -> Channel:
    return Channel(64, RunState(), byte_bound=16 * 2**20)


def test_joined_chunks_keep_the_bytes_their_producers_counted() -> None:
    channel = bounded()
    first = [np.zeros(KIB, np.uint8), 1]
    second = [np.zeros(2 * KIB, np.uint8)]
    channel.put([0, 1], first, size=chunk_nbytes(first))
    channel.put([2], second, size=chunk_nbytes(second))
    keys, values, size = channel.get_sized(limit=3)
    assert list(keys) == [0, 1, 2]
    assert size == 3 * KIB == chunk_nbytes(values)


def test_a_split_chunk_counts_its_parts_exactly() -> None:
    """Not in proportion to their lengths: the array sits in the second half."""
    channel = bounded()
    values = [1, 2, np.zeros(4 * KIB, np.uint8), 3]
    channel.put(range(4), values, size=chunk_nbytes(values))
    head = channel.get_sized(limit=2)
    rest = channel.get_sized()
    assert (list(head[0]), head[2]) == ([0, 1], 0)
    assert (list(rest[0]), rest[2]) == ([2, 3], 4 * KIB)
    channel.close()
    assert channel.get_sized() is END


def test_plain_items_are_never_scanned_again() -> None:
    channel = bounded()
    channel.put(range(10), list(range(10)), size=0)
    assert channel.get_sized(limit=4)[2] == 0
    assert channel.get_sized(limit=4)[2] == 0
    assert channel.get(limit=4) == (range(8, 10), [8, 9])


def test_a_channel_without_a_byte_bound_knows_no_bytes() -> None:
    channel = Channel(64, RunState())
    channel.put([0], [np.zeros(KIB, np.uint8)], size=0)
    assert channel.get_sized()[2] == -1


def make(i: int) -> np.ndarray:
    return np.full(KIB * (i % 3 + 1), i % 256, np.uint8)


def test_process_stages_hand_on_arrays_under_the_counted_window() -> None:
    """The window and the channels of a process pipeline run on the bytes the workers report
    and the channels carry: arrays of mixed sizes, chunks split and joined, still all delivered
    in order and intact."""
    stream = (
        hr.from_iterable(range(300))
        .map(make, workers=2, backend="process")
        .map(lambda a: a * 1, workers=2, backend="process")
    )
    out = stream.collect()
    assert [(len(a), int(a[0])) for a in out] == [(KIB * (i % 3 + 1), i % 256) for i in range(300)]


def inc(x: int) -> int:
    return x + 1


def test_the_parent_scans_no_items_of_a_process_stage(monkeypatch: Any) -> None:
    """What the parent's runner would count again (a stage's input chunks, a process stage's
    outputs) it takes from the channel and from the worker; a thread stage's outputs it still
    counts (its worker shares the parent's interpreter: nothing to gain)."""
    import headrace._runner as runner

    scanned: list[int] = []

    def counting(values: list[Any]) -> int:
        scanned.append(len(values))
        return chunk_nbytes(values)

    monkeypatch.setattr(runner, "chunk_nbytes", counting)
    got = hr.from_iterable(range(5000)).map(inc, workers=2, backend="process").collect()
    assert got == list(range(1, 5001))
    assert sum(scanned) == 0
    hr.from_iterable(range(5000)).map(inc, workers=2, backend="thread").collect()
    assert sum(scanned) == 5000
