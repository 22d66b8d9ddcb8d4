"""A chunk too large for the pipe (many records of some tens of kB, each below the size that
goes to shared memory on its own) crosses in a shared-memory slot, so that the next chunk can
wait behind a running one; without a free slot it goes down the pipe as before."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest

import headrace as hr
from headrace._backends._process._supervisor import ProcessWorkers
from headrace._shm import THRESHOLD, SlotPool

pytestmark = pytest.mark.timeout(90)

#: Records of 48 kB (a compressed image): below THRESHOLD, so they travel in the chunk's pickle.
RECORD = 48_000


def tag(i: int) -> bytes:
    """The start of record ``i``: its key, after a marker (a chunk's pickle can be searched
    for a record)."""
    return b"REC" + i.to_bytes(4, "little")


def records(n: int) -> list[bytes]:
    return [tag(i) + os.urandom(RECORD - 7) for i in range(n)]


def digest(record: bytes) -> str:
    return hashlib.sha256(record).hexdigest()


def count_boxes(monkeypatch: pytest.MonkeyPatch, kept: list[bytes] | None = None) -> list[int]:
    """The sizes of the messages that went through a slot (and those messages, in ``kept``)."""
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


def test_a_chunk_of_large_records_crosses_in_shared_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    assert RECORD < THRESHOLD
    boxed = count_boxes(monkeypatch)
    data = records(300)
    got = hr.from_iterable(data).map(digest, workers=2, backend="process").collect()
    assert got == [digest(r) for r in data]
    assert boxed, "no chunk went through shared memory"
    assert min(boxed) > 64 * 1024  # only messages too large for the pipe


def test_without_room_in_shared_memory_the_chunk_goes_down_the_pipe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    boxed = count_boxes(monkeypatch)

    def no_room(self: SlotPool, raw: memoryview, holder: int) -> Any:
        return None

    monkeypatch.setattr(SlotPool, "put", no_room)
    data = records(200)
    got = hr.from_iterable(data).map(digest, workers=2, backend="process").collect()
    assert got == [digest(r) for r in data]
    assert not boxed


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
    got = (
        hr.from_iterable(records(120))
        .map(crash_on_one, workers=2, backend="process", on_error="skip")
        .collect()
    )
    assert got == [i for i in range(120) if i != CRASH]
    assert any(tag(CRASH) in m for m in messages), "the chunk that crashed was not in a slot"
