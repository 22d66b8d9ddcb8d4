"""A chunk too large for the pipe (many records of some tens of kB, each below the size that
goes to shared memory on its own) crosses in a shared-memory slot, so that the next chunk can
wait behind a running one; without a free slot it goes down the pipe as before.

The first such chunk of a stage is pickled, then copied into a slot (`_boxed`); the next ones
are pickled straight into a slot (`encode_in_slot`), sized by what the last one took per item.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import pickle
import time
from typing import Any

import pytest

import headrace as hr
from headrace import _shm
from headrace._backends._process._supervisor import ProcessWorkers
from headrace._shm import THRESHOLD, SlotPool

pytestmark = pytest.mark.timeout(90)

#: Records of 48 kB (a compressed image): below THRESHOLD, so they travel in the chunk's pickle.
RECORD = 48_000


def tag(i: int) -> bytes:
    """The start of record ``i``: its key, after a marker (a chunk's pickle can be searched
    for a record)."""
    return b"REC" + i.to_bytes(4, "little")


def records(n: int, size: int = RECORD) -> list[bytes]:
    return [tag(i) + os.urandom(size - 7) for i in range(n)]


def digest(record: bytes) -> str:
    return hashlib.sha256(record).hexdigest()


def count_boxes(monkeypatch: pytest.MonkeyPatch, kept: list[bytes] | None = None) -> list[int]:
    """The sizes of the messages that were copied into a slot (and those messages, in
    ``kept``)."""
    boxed: list[int] = []
    original = ProcessWorkers._boxed

    def counting(self: ProcessWorkers, message: bytes, pid: int) -> bytes:
        out = original(self, message, pid)
        if out is not message:
            boxed.append(len(message))
            if kept is not None:
                kept.append(bytes(message))
        return out

    monkeypatch.setattr(ProcessWorkers, "_boxed", counting)
    return boxed


def count_in_slot(
    monkeypatch: pytest.MonkeyPatch, kept: list[bytes] | None = None
) -> list[int | None]:
    """For each chunk the parent tried to pickle straight into a slot: the pickle's size, or
    None when it went the other way (and the chunks that made it, pickled, in ``kept``)."""
    sizes: list[int | None] = []
    original = _shm.encode_in_slot

    def counting(obj: Any, pool: SlotPool, holder: int, size: int) -> Any:
        out = original(obj, pool, holder, size)
        sizes.append(None if out is None else out[1][0][2])
        if out is not None and kept is not None:
            kept.append(pickle.dumps(obj))
        return out

    monkeypatch.setattr(_shm, "encode_in_slot", counting)
    return sizes


def count_loads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the pickles this process loads from slots (`_load_from`)."""
    loaded: list[int] = []
    original = _shm._load_from

    def counting(buffer: Any) -> Any:
        loaded.append(len(buffer))
        return original(buffer)

    monkeypatch.setattr(_shm, "_load_from", counting)
    return loaded


def test_a_chunk_of_large_records_crosses_in_shared_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    assert RECORD < THRESHOLD
    boxed = count_boxes(monkeypatch)
    in_slot = count_in_slot(monkeypatch)
    data = records(300)
    got = hr.from_iterable(data).map(digest, workers=2, backend="process").collect()
    assert got == [digest(r) for r in data]
    assert in_slot and all(in_slot), "no chunk was pickled into a slot"
    assert min(s for s in in_slot if s is not None) > 64 * 1024  # only those the pipe can't take
    assert all(size > 64 * 1024 for size in boxed)


def test_without_room_in_shared_memory_the_chunk_goes_down_the_pipe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    boxed = count_boxes(monkeypatch)
    in_slot = count_in_slot(monkeypatch)

    def no_room(self: SlotPool, size: int, holder: int) -> Any:
        return None

    monkeypatch.setattr(SlotPool, "take", no_room)
    data = records(200)
    got = hr.from_iterable(data).map(digest, workers=2, backend="process").collect()
    assert got == [digest(r) for r in data]
    assert not boxed
    assert in_slot and not any(in_slot)  # tried, found no slot, went down the pipe


def test_a_chunk_that_outgrows_its_slot_takes_the_first_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A chunk whose pickle does not fit in the slot sized for it (its records larger than the
    last chunk's) is pickled again the first way, and the next one goes into a slot again.
    Here the second try is given a slot far too small."""
    tried: list[int | None] = []
    calls = itertools.count()
    original = _shm.encode_in_slot

    def second_too_small(obj: Any, pool: SlotPool, holder: int, size: int) -> Any:
        out = original(obj, pool, holder, THRESHOLD if next(calls) == 1 else size)
        tried.append(None if out is None else out[1][0][2])
        return out

    monkeypatch.setattr(_shm, "encode_in_slot", second_too_small)
    data = records(400)
    got = hr.from_iterable(data).map(digest, workers=2, backend="process").collect()
    assert got == [digest(r) for r in data]
    assert tried.count(None) == 1 and tried[-1] is not None


def shout(text: str) -> str:
    return text.upper()


def test_documents_in_any_script_cross_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """Text crosses as UTF-8: a document of non-ASCII letters takes two to four bytes each."""
    in_slot = count_in_slot(monkeypatch)
    documents = [
        f"{i} " + ("für ✓ 書 " * 4000 if i % 3 else "plain text " * 4000) for i in range(90)
    ]
    got = hr.from_iterable(documents).map(shout, workers=2, backend="process").collect()
    assert got == [d.upper() for d in documents]
    assert any(in_slot), "no chunk of documents was pickled into a slot"


def test_in_slot_round_trip_and_overflow() -> None:
    """`encode_in_slot` in one process: the chunk decodes whole and its slot is free again
    once decoded; one that does not fit, or that plain pickle refuses, leaves the slot free
    and says None."""
    pool, mapper = SlotPool(_shm.run_token(), 2**26), _shm.Mapper()
    try:
        values = [*records(20), "ünïcode" * 500, (b"x" * 70_000, 3)]
        encoded = _shm.encode_in_slot(values, pool, os.getpid(), 2**21)
        assert encoded is not None
        data, places = encoded
        assert len(data) < 200 and len(places) == 1
        assert _shm.decode(data, places, mapper) == values
        assert [slot.state for slot in pool._slots] == [0]  # free for the next chunk
        assert _shm.encode_in_slot(values, pool, os.getpid(), THRESHOLD) is None
        assert _shm.encode_in_slot([lambda: 1], pool, os.getpid(), THRESHOLD) is None
        assert all(slot.state == 0 for slot in pool._slots)
    finally:
        pool.close()
        mapper.close()
    assert not [n for n in os.listdir(_shm.SHM_DIR) if n.startswith(f"hr-{pool.token}")]


#: The record whose worker dies: past the first chunks, which are small enough for the pipe.
CRASH = 40


def crash_on_one(record: bytes) -> int:
    key = int.from_bytes(record[3:7], "little")
    if key == CRASH:
        os._exit(1)
    return key


def test_a_worker_that_dies_with_a_boxed_chunk_loses_only_its_item(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    messages: list[bytes] = []
    count_boxes(monkeypatch, messages)
    count_in_slot(monkeypatch, messages)
    got = (
        hr.from_iterable(records(120))
        .map(crash_on_one, workers=2, backend="process", on_error="skip")
        .collect()
    )
    assert got == [i for i in range(120) if i != CRASH]
    assert any(tag(CRASH) in m for m in messages), "the chunk that crashed was not in a slot"


def apply(item: tuple[bytes, Any]) -> int:
    record, fn = item
    return int(fn(record))


def test_values_only_cloudpickle_takes_stop_the_tries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Records that come with a lambda: plain pickle refuses each chunk, cloudpickle sends it;
    after `InSlot.TRIES` refusals in a row the stage stops trying."""
    in_slot = count_in_slot(monkeypatch)
    data = [(record, lambda r: r[3]) for record in records(600)]
    got = hr.from_iterable(data).map(apply, workers=2, backend="process").collect()
    assert got == [r[3] for r, _ in data]
    # Two workers' threads may each start a try before either has counted the other's.
    assert set(in_slot) == {None}
    assert _shm.InSlot.TRIES <= len(in_slot) <= _shm.InSlot.TRIES + 1


def reverse(record: bytes) -> bytes:
    return record[::-1]


def test_large_results_come_back_through_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    """The workers pickle their chunks of large outputs straight into slots too: the program
    loads them from there (`_load_from`, which it runs for each such chunk)."""
    loaded = count_loads(monkeypatch)
    data = records(300)
    got = hr.from_iterable(data).map(reverse, workers=2, backend="process").collect()
    assert got == [r[::-1] for r in data]
    assert loaded, "no chunk of outputs came back through a slot"
    assert min(loaded) > 64 * 1024


def joined(items: Any) -> Any:
    """Tumbling windows of 8 records, each joined into one bytes value (384 kB)."""
    window: list[bytes] = []
    for record in items:
        window.append(record)
        if len(window) == 8:
            yield b"".join(window)
            window = []
    if window:
        yield b"".join(window)


def test_a_transform_s_large_chunks_and_outputs_cross_in_slots(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A process `transform`'s stream goes the same way: its chunks of records are pickled
    straight into slots, and so are its outputs too large for the pipe."""
    in_slot = count_in_slot(monkeypatch)
    loaded = count_loads(monkeypatch)
    data = records(400)
    got = hr.from_iterable(data).transform(joined, backend="process").collect()
    assert got == [b"".join(data[i : i + 8]) for i in range(0, 400, 8)]
    assert any(in_slot), "no chunk of the stream was pickled into a slot"
    assert loaded, "no output came back through a slot"
    assert min(loaded) > 64 * 1024


def slow_joined(items: Any) -> Any:
    for window in joined(items):
        time.sleep(0.02)
        yield window


def test_a_transform_s_feeder_keeps_few_chunks_waiting_in_slots(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stream has no window of chunks in flight: past `InSlot.STREAM_AHEAD` chunks waiting
    in slots for a slow worker, the feeder sends in band, where the pipe holds it back."""
    seen: list[int] = []
    original = SlotPool.held

    def counting(self: SlotPool, names: Any) -> int:
        seen.append(original(self, names))
        return seen[-1]

    monkeypatch.setattr(SlotPool, "held", counting)
    data = records(400)
    got = hr.from_iterable(data).transform(slow_joined, backend="process").collect()
    assert got == [b"".join(data[i : i + 8]) for i in range(0, 400, 8)]
    assert max(seen) == _shm.InSlot.STREAM_AHEAD  # it got that far ahead, never further


def test_a_fault_in_a_transform_s_feeder_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected error in the thread that feeds a process `transform` ends the run with
    that error; the worker is not left waiting for input that never comes."""

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the feeder broke")

    monkeypatch.setattr(_shm.InSlot, "encode", broken)
    with pytest.raises(RuntimeError, match="the feeder broke"):
        hr.from_iterable(records(50)).transform(joined, backend="process").collect()
