"""Inline stages after a process stage run in its workers (its tail), and so does a batch:
results, figures, error records and `hr.rng()` draws are those of the same stages run in the
parent; only the place they run changes."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np
import pytest

import headrace as hr
from headrace import _stages
from headrace._backends._base import Chunk, Done, Tail, TailStage
from headrace._stages import StageOptions, collate_auto, uncollate
from headrace._types import Collated

pytestmark = pytest.mark.timeout(90)


def decode(x: int) -> np.ndarray:
    return np.full((3, 4), x, np.float32)


def augment(a: np.ndarray) -> np.ndarray:
    return a * np.float32(hr.rng().uniform(0.5, 1.5))


def not_sevens(a: np.ndarray) -> bool:
    return int(a[0, 0]) % 7 != 3


def fails_on_fives(a: np.ndarray) -> np.ndarray:
    if int(a[0, 0]) % 5 == 0:
        raise ArithmeticError(f"item {int(a[0, 0])}")
    return a


def plus_one(a: np.ndarray) -> np.ndarray:
    return a + 1


def slow_decode(x: int) -> np.ndarray:
    """`decode` about as slow as a real one (1 ms): the stage is the pipeline's bottleneck,
    as in a training pipeline."""
    time.sleep(0.001)
    return decode(x)


def pid_of_worker(a: np.ndarray) -> dict[str, Any]:
    return {"x": a, "pid": os.getpid()}


def pipeline(backend: str, n: int, size: int, *, filtered: bool = False, **skip: Any) -> Any:
    stream = hr.from_iterable(range(n)).map(decode, workers=2, backend=backend)
    if filtered:
        stream = stream.filter(not_sevens, backend="inline")
    if skip:
        stream = stream.map(fails_on_fives, backend="inline", name="fives", **skip)
    return stream.map(augment, backend="inline").batch(size)


def results_and_figures(stream: Any) -> tuple[list[Any], list[tuple[Any, ...]], list[Any]]:
    with stream.open(seed=11) as run:
        batches = list(run)
        report = run.report()
    figures = [
        (s.name, s.items_in, s.items_out, s.completed, s.dropped, s.errors, s.cancelled)
        for s in report.stages
    ]
    errors = [(e.stage, e.index, e.type) for e in report.errors]
    return batches, figures, errors


@pytest.mark.parametrize(
    ("n", "size", "filtered", "skip"),
    [
        (320, 32, False, False),  # whole batches
        (1000, 7, False, False),  # a batch size that chunks do not hold evenly
        (5, 8, False, False),  # one short batch
        (500, 16, True, False),  # a filter shifts the batches after its first drop
        (400, 10, True, True),  # skipped errors too
    ],
)
def test_a_tail_gives_what_the_same_stages_give_in_the_parent(
    n: int, size: int, filtered: bool, skip: bool
) -> None:
    options = {"on_error": "skip"} if skip else {}
    got = results_and_figures(pipeline("process", n, size, filtered=filtered, **options))
    want = results_and_figures(pipeline("thread", n, size, filtered=filtered, **options))
    assert len(got[0]) == len(want[0])
    for a, b in zip(got[0], want[0], strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)  # the same items, the same rng() draws
    assert got[1] == want[1]  # every stage's figures
    assert sorted(got[2]) == sorted(want[2])  # the error records: stage, item, type


def test_the_tail_and_the_batch_run_in_the_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    gathered = []

    def counting_collate(items: list[Any]) -> Any:
        gathered.append(len(items))
        return collate_auto(items)

    monkeypatch.setattr(_stages, "collate_auto", counting_collate)  # this process's only
    stream = (
        hr.from_iterable(range(40 * 16))
        .map(slow_decode, workers=2, backend="process")
        .map(pid_of_worker, backend="inline")
        .batch(16)
    )
    batches = stream.collect()
    assert len(batches) == 40
    pids = {int(p) for b in batches for p in b["pid"]}
    assert os.getpid() not in pids and len(pids) >= 1
    # Batches come made; the parent gathers only groups that straddle chunks (at the start,
    # while its input arrives a few items at a time).
    assert len(gathered) <= 4, gathered


def test_an_error_in_a_tail_stage_names_that_stage_and_item() -> None:
    stream = (
        hr.from_iterable(range(100))
        .map(decode, workers=2, backend="process")
        .map(fails_on_fives, backend="inline", name="fives")
        .batch(8)
    )
    with pytest.raises(ArithmeticError, match="item 0") as info:
        stream.collect()
    notes = " ".join(getattr(info.value, "__notes__", []))
    assert "fives" in notes and "0" in notes


def test_a_function_that_cannot_be_pickled_stays_in_the_parent() -> None:
    lock = threading.Lock()
    seen: list[int] = []

    def remember(a: np.ndarray) -> np.ndarray:  # closes over a lock: cannot travel
        with lock:
            seen.append(int(a[0, 0]))
        return a

    stream = (
        hr.from_iterable(range(50))
        .map(decode, workers=2, backend="process")
        .map(remember, backend="inline")
        .batch(8)
    )
    batches = stream.collect()
    assert sorted(seen) == list(range(50))  # it ran here, on every item
    assert [int(b[0, 0, 0]) for b in batches] == list(range(0, 50, 8))


def test_a_stage_with_two_consumers_is_not_fused() -> None:
    made = hr.from_iterable(range(60)).map(decode, workers=2, backend="process")
    left = made.map(plus_one, backend="inline")
    right = made.map(not_sevens, backend="inline")
    pairs = hr.zip(left, right).batch(6).collect()
    assert [int(row[0, 0]) for b in pairs for row in b[0]] == list(range(1, 61))
    assert [k for b in pairs for k in b[1]] == [i % 7 != 3 for i in range(60)]


def test_take_after_a_batch_made_in_the_workers_stops_cleanly() -> None:
    stream = (
        hr.from_iterable(range(10**6))
        .map(decode, workers=2, backend="process")
        .map(augment, backend="inline")
        .batch(16)
        .take(3)
    )
    with stream.open() as run:
        batches = list(run)
        report = run.report()
    assert [b.shape for b in batches] == [(16, 3, 4)] * 3
    batch = next(s for s in report.stages if s.name == "batch")
    assert batch.items_out >= 3 and batch.items_in >= 48  # counted as items, not batches


def test_unordered_tail_keeps_every_item_once() -> None:
    stream = (
        hr.from_iterable(range(300))
        .map(decode, workers=2, backend="process", ordered=False)
        .map(plus_one, backend="inline")
        .batch(16)
    )
    batches = stream.collect()
    assert sorted(int(row[0, 0]) for b in batches for row in b) == list(range(1, 301))
    assert sum(len(b) == 16 for b in batches) >= len(batches) - 2  # at most 2 short ones


# --- the worker's side, in this process ---------------------------------------------------------


def test_tail_collates_whole_aligned_groups_and_leaves_the_rest() -> None:
    stage = TailStage("double", "map", lambda x: 2 * x, StageOptions(), position=2, seed=0)
    tail = Tail([stage], (4, None))
    chunk = Chunk(0, range(10, 20), list(range(10)), base=2)  # outputs at positions 2..11
    done = Done(chunk, [(range(10, 20), [np.int64(v) for v in range(10)])], 10)
    figures = tail.run(done)
    assert [(f.items_in, f.completed, f.dropped) for f in figures] == [(10, 10, 0)]
    keys, values = done.outputs[0]
    kinds = [type(v).__name__ for v in values]
    # positions 2, 3 loose; 4..7 one batch; 8..11 one batch
    assert kinds == ["int64", "int64", "Collated", "Collated"]
    assert [int(v) for v in values[:2]] == [0, 2]
    assert values[2].value == [4, 6, 8, 10] and values[2].n == 4
    assert list(keys) == [10, 11, 12, 16]


def test_uncollate_undoes_collate_auto() -> None:
    items = [
        {"x": np.arange(3) + i, "pair": (np.float32(i), f"s{i}"), "label": i} for i in range(5)
    ]
    batch = collate_auto(items)
    again = collate_auto(uncollate(batch, 5))
    np.testing.assert_array_equal(again["x"], batch["x"])
    np.testing.assert_array_equal(again["pair"][0], batch["pair"][0])
    assert again["pair"][1] == batch["pair"][1] and again["label"] == batch["label"]


def test_a_batch_stage_regroups_batches_after_a_lost_item() -> None:
    body = _stages.batch_body(3, False, "auto")
    rows = [np.full(2, i) for i in range(7)]
    made = Collated(np.stack(rows[1:4]), 3, 0)  # 1, 2, 3 made in a worker; 0 came loose
    out = list(body(iter([rows[0], made, rows[4], Collated(np.stack(rows[5:7]), 2, 0)])))
    assert [b[:, 0].tolist() for b in out] == [[0, 1, 2], [3, 4, 5], [6]]


def test_collate_auto_stacks_equal_arrays_into_the_array_empty_gives() -> None:
    made: list[np.ndarray] = []

    def empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        made.append(np.full(shape, -1, dtype))
        return made[-1]

    rows = [np.full(3, i, np.float32) for i in range(4)]
    batch = collate_auto([{"x": row, "y": (row, i)} for i, row in enumerate(rows)], empty)
    assert batch["x"] is made[0] and batch["y"][0] is made[1]
    np.testing.assert_array_equal(batch["x"], np.stack(rows))
    assert batch["y"][1] == [0, 1, 2, 3]
    # what is not one shape and dtype is left to np.stack, as without `empty`
    mixed = [np.zeros(2), np.zeros(2, np.int32)]
    assert collate_auto(mixed, empty).dtype == np.stack(mixed).dtype
    with pytest.raises(ValueError, match=r"cannot stack arrays of shapes \(2,\) and \(3,\)"):
        collate_auto([np.zeros(2), np.zeros(3)], empty)
    assert len(made) == 2


def test_a_batch_stacked_in_a_slot_crosses_without_a_second_slot() -> None:
    """The worker's tail stacks a batch into a slot of its pool (`SlotPool.empty`): encoding
    it sends that slot as it is (no copy into another one), the receiver reads the batch there,
    and `settle` frees the slot of a batch that was not sent."""
    from headrace import _shm

    pool, mapper = _shm.SlotPool(_shm.run_token(), 2**26), _shm.Mapper()
    try:
        stage = TailStage("same", "map", lambda x: x, StageOptions(), position=2, seed=0)
        tail = Tail([stage], (4, "auto"))
        tail.empty = lambda shape, dtype: pool.empty(shape, dtype, os.getpid())
        rows = [np.full(2**14, i, np.float64) for i in range(8)]  # 128 KiB each
        done = Done(Chunk(0, range(8), rows, base=0), [(range(8), rows)], 8)
        tail.run(done)
        _keys, values = done.outputs[0]
        assert [type(v).__name__ for v in values] == ["Collated", "Collated"]
        slots = pool.reserved
        assert slots == 2 * _shm._round_up(4 * 2**17)  # one slot per batch, made by `empty`
        data, places = _shm.encode(values[0], pool, os.getpid())
        assert pool.reserved == slots and len(places) == 1  # sent from the slot it was made in
        pool.settle({name for name, _, _ in places})
        got = _shm.decode(data, places, mapper)
        np.testing.assert_array_equal(got.value, np.stack(rows[:4]))
        # the second batch was not sent: settled, its slot is free for the next array
        del values, done
        _data, again = _shm.encode(np.ones(4 * 2**14), pool, os.getpid())
        assert pool.reserved == slots and again[0][0] != places[0][0]
        del got
    finally:
        pool.close()
        mapper.close()
    assert not [n for n in os.listdir(_shm.SHM_DIR) if n.startswith(f"hr-{pool.token}")]


def test_batches_of_large_arrays_made_in_the_workers_are_right() -> None:
    rows = [np.full((64, 64), i, np.float32) for i in range(50)]  # 16 KiB rows, 512 KiB batches
    stream = (
        hr.from_iterable(rows)
        .map(np.negative, workers=2, backend="process")
        .map(np.abs, backend="inline")
        .batch(32)
    )
    batches = stream.collect()
    assert [len(b) for b in batches] == [32, 18]
    np.testing.assert_array_equal(np.concatenate(batches), np.stack(rows))
