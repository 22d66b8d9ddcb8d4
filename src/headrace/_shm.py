"""Shared memory for arrays that cross processes, and the codec that uses it.

Owns: `SlotPool` (one sending process's reusable shared-memory slots), `StagePool` (the
slots all the workers of one stage share), `Mapper` (a receiving
process's view of other processes' slots), `encode` / `decode` (pickle protocol 5 with the
large buffers out of band) and `encode_in_slot`, `remove_run` (the clean-up of a run's
segments).

How an array crosses (one copy per hop, the fewest possible for an array the user allocated in
private memory):

    sender: pickle.dumps(protocol=5) hands every contiguous buffer >= THRESHOLD bytes to
            `SlotPool.take`, which copies it into a free slot (copy 1) and marks the slot
            in use for the receiver; the pipe carries the pickle (dtype, shape) and the slot's
            name, offset and length.
    receiver: maps the slot (kept mapped: its pages are faulted in once) and unpickles with the
            slot's memory as the array's buffer: no copy. When the array and every view of it
            are gone, a finalizer marks the slot free, and the sender reuses it. (Copying out
            instead would cost a second copy per hop; allocating the user's array in a slot
            from the start would need the user's code to ask for it.)

A slot is a file in /dev/shm named ``hr-<owner pid>-<random>-<pid>-<random>`` (the run token is
the first two parts: the pid of the process that owns the run, so that `sweep_stale` can tell a
dead run's segments from a live one's), created with
O_EXCL and mode 0600, its size reserved with posix_fallocate (a full /dev/shm is a fallback to
the pipe, never a SIGBUS later). Each slot starts with a 64-byte header: magic, state (free / in
use), capacity, and the pid of the process that holds it. A receiver checks the header before
it reads. Slots are registered with multiprocessing's resource tracker, which removes them if
every process of the run is killed; `remove_run` removes them when the run ends.

A large object without arrays (a chunk of records or documents, too large for the pipe) is
pickled straight into a slot (`encode_in_slot`): the pipe carries a marker and the slot's
place, and the receiver loads the object from its map of the slot, which is free again at once.

Non-contiguous arrays, object arrays and small buffers are pickled in band. Imports numpy only
to read an array from a slot (a program that sends arrays has it), nothing from headrace.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import pickle
import struct
import threading
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from ._types import loaded_numpy

if TYPE_CHECKING:
    import numpy as np


SHM_DIR = "/dev/shm"


def shm_path(name: str) -> str:
    """The path of segment ``name``: a string (pathlib costs the worker processes' start)."""
    return f"{SHM_DIR}/{name}"


#: Buffers at least this large travel through shared memory; smaller ones in the pipe (a
#: pipe round trip of 64 KiB costs about what mapping and freeing a slot does).
THRESHOLD = 64 * 1024
#: A chunk whose pickle (without arrays) takes this much or more is pickled into a slot.
IN_SLOT_MIN = 256 * 1024
#: Default byte budget of all the slots of one run: at most this much...
DEFAULT_BUDGET = 2 * 2**30
#: ...and at most this fraction of the free space in /dev/shm.
SHM_FRACTION = 0.25

HEADER = 64
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # Linux
_MAGIC = b"HRS1"
_FREE, _USED = 0, 1
# magic, state, capacity (data bytes), holder pid
_LAYOUT = struct.Struct("<4sBxxxQq")
_STATE_OFFSET = 4
_HOLDER_OFFSET = 16


def run_token() -> str:
    """A fresh name part for one run's segments: the owner's pid, then a random part."""
    return f"{os.getpid()}-{os.urandom(6).hex()}"  # what secrets.token_hex does


def owner_pid(name: str) -> int | None:
    """The pid of the process that owns the run of segment ``name`` (None: not headrace's)."""
    parts = name.split("-")
    if len(parts) < 3 or parts[0] != "hr" or not parts[1].isdigit():
        return None
    return int(parts[1])


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` lives (another user's counts as alive: never the wrong way)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def stale_segments() -> list[str]:
    """Segments in /dev/shm whose owning process is dead (every process of their run was
    killed at once, so nothing removed them). Never a segment of a live process's run."""
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return []
    owners = {name: owner_pid(name) for name in names}
    alive = {pid: pid_alive(pid) for pid in set(owners.values()) if pid is not None}
    return sorted(n for n, pid in owners.items() if pid is not None and not alive[pid])


def sweep_stale() -> int:
    """Remove the segments of dead runs (see `stale_segments`); how many were removed."""
    removed = 0
    for name in stale_segments():
        with contextlib.suppress(OSError):
            os.unlink(shm_path(name))
            removed += 1
    return removed


def default_budget() -> int:
    """The byte budget of a run's slots when ``memory=`` is not given."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return 0
    return int(min(DEFAULT_BUDGET, st.f_bavail * st.f_frsize * SHM_FRACTION))


def _register(name: str) -> None:
    from multiprocessing import resource_tracker

    resource_tracker.register("/" + name, "shared_memory")


def _unregister(name: str) -> None:
    from multiprocessing import resource_tracker

    with contextlib.suppress(Exception):
        resource_tracker.unregister("/" + name, "shared_memory")


def create(name: str, size: int, content: memoryview | None = None) -> mmap.mmap:
    """A new private segment of ``size`` bytes, reserved up front and registered for clean-up;
    OSError (e.g. ENOSPC) if /dev/shm cannot hold it. ``content``: bytes to start it with
    (written with `write_all`: twice as fast as copying into the new mapping page by page).

    Registered with the resource tracker before it exists: a process SIGKILLed while making it
    (a program killed early in a run, its workers with it) leaves nothing the tracker does not
    know of."""
    path = shm_path(name)
    _register(name)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except BaseException:
        _unregister(name)
        raise
    try:
        os.posix_fallocate(fd, 0, size)  # reserve now: a full /dev/shm is an error here,
        if content is not None:  # not a SIGBUS when a page is first touched
            write_all(fd, content)
        memory = mmap.mmap(fd, size)
    except BaseException:
        os.unlink(path)
        _unregister(name)
        raise
    finally:
        os.close(fd)
    return memory


#: Bytes per write() of `write_all`.
_WRITE_BYTES = 64 * 2**20


def write_all(fd: int, content: memoryview) -> None:
    """Write ``content`` at the start of the file ``fd``. The kernel fills the file's pages in
    one pass (measured, 1 GiB into /dev/shm: 0.8-1.0 GB/s against 0.3-0.6 GB/s for a copy into
    a fresh mapping, which faults every page in one at a time)."""
    content = content.cast("B")
    done = 0
    while done < len(content):
        done += os.pwrite(fd, content[done : done + _WRITE_BYTES], done)


def attach(name: str) -> mmap.mmap:
    """Map an existing segment of this run."""
    if not name.startswith("hr-") or "/" in name:
        raise ValueError(f"not a headrace shared-memory segment: {name!r}")
    fd = os.open(shm_path(name), os.O_RDWR)
    try:
        # The slot's pages exist (its sender wrote them): map them all in one call instead of
        # one page fault per 4 KiB on first read (8 MiB: 4 ms instead of 10 ms here).
        return mmap.mmap(fd, 0, flags=mmap.MAP_SHARED | _POPULATE)
    finally:
        os.close(fd)


def remove(name: str) -> None:
    """Remove one segment of this process and forget it (no error if it is gone)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(shm_path(name))
    _unregister(name)


def remove_run(token: str) -> int:
    """Remove every segment of the run ``token`` (whichever process made it); how many."""
    removed = 0
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return 0
    for name in names:
        if name.startswith(f"hr-{token}-"):
            # One entry that cannot be removed (another user's file under a guessed name) must
            # not stop the removal of the others.
            with contextlib.suppress(OSError):
                os.unlink(shm_path(name))
                _unregister(name)
                removed += 1
    return removed


class Slot:
    """One segment: its name, its capacity in bytes (after the header), its mapping."""

    __slots__ = ("capacity", "memory", "name")

    def __init__(self, name: str, capacity: int, memory: mmap.mmap) -> None:
        self.name = name
        self.capacity = capacity
        self.memory = memory

    @property
    def state(self) -> int:
        return self.memory[_STATE_OFFSET]

    def hold(self, pid: int) -> None:
        struct.pack_into("<q", self.memory, _HOLDER_OFFSET, pid)
        self.memory[_STATE_OFFSET] = _USED

    def holder(self) -> int:
        return int(struct.unpack_from("<q", self.memory, _HOLDER_OFFSET)[0])


class SlotPool:
    """The slots one process sends from: created on demand up to ``budget`` bytes, reused.

    A slot is taken for a buffer when a free one fits it (at most twice its size, so large
    slots are not tied up by small buffers); otherwise a new slot is made if the budget allows,
    after dropping free slots that do not fit. If neither works the buffer goes in band.
    """

    def __init__(self, token: str, budget: int) -> None:
        self.token = token
        self.budget = budget
        self._slots: list[Slot] = []
        #: Slots the sender still needs as they are (a task it may send again): not reused,
        #: even once their receiver let go of them.
        self._pins: dict[str, int] = {}
        self._bytes = 0
        #: Arrays made in slots by `empty`, by address: (start, bytes, slot), until `settle`.
        self._filled: dict[int, tuple[int, Slot]] = {}
        self._lock = threading.Lock()
        self._warned = False
        self._closed = False
        self.fallbacks = 0  # buffers that went in band for want of a slot

    def take(self, size: int, holder: int) -> Slot | None:
        with self._lock:
            if self._closed:  # the run is over: what a late thread sends goes in band
                return None
            free = self._free_slot(size, holder)
            if free is not None:
                return free
            capacity = _round_up(size)
            if self._bytes + capacity > self.budget:
                self._drop_free(self._bytes + capacity - self.budget)
            if self._bytes + capacity > self.budget:
                self.fallbacks += 1
                return None
            return self._make(capacity, holder)

    def put(self, raw: memoryview, holder: int) -> Slot | None:
        """A slot held for ``holder`` with ``raw`` copied in (after its header); None if
        there is no room (the bytes then go in band)."""
        slot = self.take(raw.nbytes, holder)
        if slot is not None:
            _copy_into(slot.memory, raw)
        return slot

    def _free_slot(self, size: int, holder: int) -> Slot | None:
        """A free slot that fits ``size`` (at most twice as large), held for ``holder``."""
        for slot in self._slots:
            if (
                slot.state == _FREE
                and size <= slot.capacity <= 2 * size + THRESHOLD
                and slot.name not in self._pins
            ):
                slot.hold(holder)
                return slot
        return None

    def _make(self, capacity: int, holder: int) -> Slot | None:
        """A new slot held for ``holder``; None (a buffer that goes in band) if it cannot be
        reserved."""
        made = self._create(capacity)
        if made is None:
            self.fallbacks += 1
            return None
        made.hold(holder)
        return made

    def _create(self, capacity: int) -> Slot | None:
        # A random last part: a name another user could guess would let them squat it.
        name = f"hr-{self.token}-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            memory = create(name, HEADER + capacity)
        except OSError as exc:
            self._warn(f"cannot reserve {HEADER + capacity} bytes in {SHM_DIR}: {exc}")
            return None
        _LAYOUT.pack_into(memory, 0, _MAGIC, _FREE, capacity, 0)
        slot = Slot(name, capacity, memory)
        self._slots.append(slot)
        self._bytes += capacity
        return slot

    def _drop_free(self, needed: int) -> None:
        for slot in sorted(self._slots, key=lambda s: s.capacity):
            if needed <= 0:
                return
            if slot.state == _FREE and slot.name not in self._pins:
                self._slots.remove(slot)
                self._bytes -= slot.capacity
                needed -= slot.capacity
                self._destroy(slot)

    def _destroy(self, slot: Slot) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(shm_path(slot.name))
            _unregister(slot.name)
        with contextlib.suppress(BufferError):
            slot.memory.close()

    def release_held_by(self, pid: int) -> int:
        """Free the slots a dead process held; how many."""
        freed = 0
        with self._lock:
            for slot in self._slots:
                if slot.state == _USED and slot.holder() == pid:
                    slot.memory[_STATE_OFFSET] = _FREE
                    freed += 1
        return freed

    def empty(self, shape: tuple[int, ...], dtype: Any, holder: int) -> Any:
        """An uninitialised array in a slot held for ``holder``, for the sender to fill in
        place: `encode` then sends that slot as it is, without copying the array. None for an
        array too small for a slot, or when no slot is free. `settle` frees the slots of the
        arrays that were not sent."""
        import numpy as np  # loaded already: the caller stacks arrays

        dtype = np.dtype(dtype)
        nbytes = dtype.itemsize
        for n in shape:
            nbytes *= n
        if nbytes < THRESHOLD:
            return None
        slot = self.take(nbytes, holder)
        if slot is None:
            return None
        array = np.ndarray(shape, dtype, buffer=slot.memory, offset=HEADER)
        with self._lock:
            self._filled[array.__array_interface__["data"][0]] = (nbytes, slot)
        return array

    def filled_place(self, raw: memoryview) -> Place | None:
        """Where ``raw`` lies if it is (part of) an array `empty` made; else None."""
        if not self._filled:
            return None
        import numpy as np  # loaded already: `empty` made arrays

        address = np.frombuffer(raw, np.uint8).__array_interface__["data"][0]
        with self._lock:
            for start, (nbytes, slot) in self._filled.items():
                if start <= address and address + raw.nbytes <= start + nbytes:
                    return (slot.name, address - start, raw.nbytes)
        return None

    def settle(self, sent: set[str]) -> None:
        """Forget the arrays `empty` made; free the slots of those not in ``sent`` (names of
        the slots that went out: their receivers free them)."""
        with self._lock:
            for _, slot in self._filled.values():
                if slot.name not in sent:
                    slot.memory[_STATE_OFFSET] = _FREE
            self._filled.clear()

    def keep(self, data: bytes, places: list[Place]) -> Any:
        """Pin the slots of an encoding this pool made, and decode it from this process's own
        maps of them (no copy): the sender can let go of the original objects and still send
        them again (`hold_again`) until it calls `let_go`."""
        with self._lock:
            slots = {slot.name: slot for slot in self._slots}
            for name, _, _ in places:
                self._pins[name] = self._pins.get(name, 0) + 1
        import numpy as np  # loaded already: the encoding holds arrays

        buffers = [
            np.frombuffer(slots[name].memory, np.uint8, count=length, offset=HEADER + offset)
            for name, offset, length in places
        ]
        return pickle.loads(data, buffers=buffers)

    def hold_again(self, places: list[Place], holder: int) -> None:
        """Pinned slots, held for a new receiver (the first one died, or never got them)."""
        names = {name for name, _, _ in places}
        with self._lock:
            for slot in self._slots:
                if slot.name in names:
                    slot.hold(holder)

    def let_go(self, places: list[Place]) -> None:
        """Unpin what `keep` pinned: the slots are reused once their receiver is done."""
        with self._lock:
            for name, _, _ in places:
                count = self._pins.get(name, 0) - 1
                if count > 0:
                    self._pins[name] = count
                else:
                    self._pins.pop(name, None)

    def held(self, names: Collection[str]) -> int:
        """How many of the slots named are held still (their receiver has not let go)."""
        with self._lock:
            return sum(1 for slot in self._slots if slot.name in names and slot.state != _FREE)

    @property
    def reserved(self) -> int:
        return self._bytes

    def close(self) -> None:
        """Remove every slot of this pool (the caller knows no receiver still needs one); it
        makes no slot after this."""
        with self._lock:
            self._closed = True
            self._filled.clear()
            for slot in self._slots:
                self._destroy(slot)
            self._slots.clear()
            self._bytes = 0

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"headrace: {message}; arrays go through the pipe instead of shared memory "
                "(slower). Free space in /dev/shm or lower memory=.",
                ResourceWarning,
                stacklevel=2,
            )


class StagePool(SlotPool):
    """The slots that all the workers of one stage send from: a slot the consumer freed is
    reused by whichever worker sends next, so a stage holds as many slots as it has arrays in
    flight, not that many per worker.

    A directory segment (made by the parent with `make_directory`) lists the stage's slots;
    a worker takes or makes a slot under an exclusive ``flock`` on it, and maps the slots other
    workers made as it meets them. A slot goes from free to in use only under the lock (the
    receiver frees it by writing its header). The slots are never removed here: the parent
    removes the run's files when the stage ends (`remove_run`), while the consumer may still
    read them.
    """

    def __init__(self, token: str, budget: int, directory: str) -> None:
        super().__init__(token, budget)
        self._fd = os.open(shm_path(directory), os.O_RDWR)
        self._directory = mmap.mmap(self._fd, 0)
        self._known = 0  # directory entries mapped in this process

    def take(self, size: int, holder: int) -> Slot | None:
        with self._lock:
            if self._closed:
                return None
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                return self._take_locked(size, holder)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _take_locked(self, size: int, holder: int) -> Slot | None:
        count, reserved = self._catch_up()
        free = self._free_slot(size, holder)
        if free is not None:
            return free
        capacity = _round_up(size)
        if reserved + capacity > self.budget or count >= _DIRECTORY_ENTRIES:
            self.fallbacks += 1
            return None
        made = self._make(capacity, holder)
        if made is None:
            return None
        _ENTRY.pack_into(
            self._directory, _DIR_HEAD.size + count * _ENTRY.size, made.name.encode(), capacity
        )
        _DIR_HEAD.pack_into(self._directory, 0, _DIR_MAGIC, count + 1, reserved + capacity)
        self._known = count + 1
        return made

    def _catch_up(self) -> tuple[int, int]:
        """Map the slots other workers made since the last look; (entries, bytes reserved)."""
        magic, count, reserved = _DIR_HEAD.unpack_from(self._directory, 0)
        if magic != _DIR_MAGIC:
            raise ValueError("the stage's shared-memory directory has a bad header")
        for index in range(self._known, count):
            raw, capacity = _ENTRY.unpack_from(
                self._directory, _DIR_HEAD.size + index * _ENTRY.size
            )
            name = raw.rstrip(b"\0").decode()
            try:
                memory = attach(name)
            except (OSError, ValueError):
                continue  # removed: the stage is ending
            self._slots.append(Slot(name, capacity, memory))
        self._known = count
        return count, reserved

    def close(self) -> None:
        """Unmap this process's view of the slots (the parent removes the files)."""
        with self._lock:
            self._closed = True
            self._filled.clear()
            for slot in self._slots:
                with contextlib.suppress(BufferError):
                    slot.memory.close()
            self._slots.clear()
            with contextlib.suppress(BufferError):
                self._directory.close()
            with contextlib.suppress(OSError):
                os.close(self._fd)


#: A stage's slot directory: magic, entries, bytes reserved; then (name, capacity) entries.
_DIR_HEAD = struct.Struct("<4sIQ")
_ENTRY = struct.Struct("<56sQ")
_DIR_MAGIC = b"HRD1"
#: Most slots one stage's workers make (a stage holds about as many as it has arrays in flight).
_DIRECTORY_ENTRIES = 1024


def make_directory(name: str) -> None:
    """Create the (empty) slot directory of a stage whose workers share a `StagePool`."""
    memory = create(name, _DIR_HEAD.size + _DIRECTORY_ENTRIES * _ENTRY.size)
    _DIR_HEAD.pack_into(memory, 0, _DIR_MAGIC, 0, 0)
    memory.close()


def _round_up(size: int) -> int:
    """Slot capacities: powers of two up to 1 MiB, then whole MiB."""
    if size <= 2**20:
        return max(THRESHOLD, 1 << (size - 1).bit_length())
    return -(-size // 2**20) * 2**20


class Mapper:
    """A receiving process's maps of other processes' slots, kept while the run lasts."""

    def __init__(self) -> None:
        self._maps: dict[str, mmap.mmap] = {}
        self._lock = threading.Lock()

    def view(self, name: str, offset: int, length: int) -> np.ndarray[Any, Any]:
        """The bytes of one buffer in a slot, as a uint8 array that the unpickled object will
        hold on to: when it is collected, the slot is free again."""
        memory = self._checked(name, offset, length)
        # An ndarray, not a memoryview: a memoryview made from it (as pickle and numpy do)
        # refers to this array, so the finalizer waits for the last view of the data.
        import numpy as np  # loaded already: the sender made an array

        region = np.frombuffer(memory, dtype=np.uint8, count=length, offset=HEADER + offset)
        weakref.finalize(region, _free, memory)
        return region

    def load(self, name: str, offset: int, length: int) -> Any:
        """The object pickled into one slot (`encode_in_slot`): loaded (a copy), and the slot
        free again at once. Without NumPy, which a receiver of records and text may not have
        loaded (a first import costs it some 60 ms)."""
        memory = self._checked(name, offset, length)
        start = HEADER + offset
        with memoryview(memory) as whole, whole[start : start + length] as region:
            obj = _load_from(region)
        _free(memory)
        return obj

    def _checked(self, name: str, offset: int, length: int) -> mmap.mmap:
        """The map of slot ``name``, once its header says it holds those bytes in use."""
        memory = self._map(name)
        magic, state, capacity, _ = _LAYOUT.unpack_from(memory, 0)
        if magic != _MAGIC or state != _USED or offset + length > capacity:
            raise ValueError(f"shared-memory slot {name} has a bad header; refusing to read it")
        return memory

    def _map(self, name: str) -> mmap.mmap:
        with self._lock:
            memory = self._maps.get(name)
            if memory is None:
                memory = self._maps[name] = attach(name)
            return memory

    def close(self) -> None:
        """Forget the maps; one still viewed by an array lives until that array is gone."""
        with self._lock:
            self._maps.clear()


def _free(memory: mmap.mmap) -> None:
    with contextlib.suppress(ValueError):  # closed meanwhile
        memory[_STATE_OFFSET] = _FREE


# --- the codec ------------------------------------------------------------------------------

#: Where one out-of-band buffer lives: (slot name, offset, length).
Place = tuple[str, int, int]


def encode(
    obj: Any,
    pool: SlotPool | None,
    holder: int,
    fallback: Callable[..., bytes] | None = None,
) -> tuple[bytes, list[Place]]:
    """Pickle ``obj``; large contiguous buffers go to slots of ``pool`` for ``holder``. An
    object plain pickle refuses (a lambda, a local class) is pickled with ``fallback``."""
    try:
        return _encode(obj, pool, holder, pickle.dumps)
    except (pickle.PicklingError, TypeError, AttributeError):
        if fallback is None:
            raise
    return _encode(obj, pool, holder, fallback)


def _encode(
    obj: Any, pool: SlotPool | None, holder: int, dumps: Callable[..., bytes]
) -> tuple[bytes, list[Place]]:
    if pool is None:
        return dumps(obj, protocol=5), []
    places: list[Place] = []
    taken: list[Slot] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if raw.nbytes < THRESHOLD:
            return True
        place = pool.filled_place(raw)
        if place is not None:  # written in its slot already (`SlotPool.empty`)
            places.append(place)
            return False
        slot = pool.put(raw, holder)
        if slot is None:
            return True
        taken.append(slot)
        places.append((slot.name, 0, raw.nbytes))
        return False

    try:
        data = dumps(obj, protocol=5, buffer_callback=out_of_band)
    except BaseException:
        for slot in taken:
            slot.memory[_STATE_OFFSET] = _FREE
        raise
    return data, places


def encode_in_slot(
    obj: Any, pool: SlotPool, holder: int, size: int
) -> tuple[bytes, list[Place]] | None:
    """Pickle ``obj`` straight into a slot of at least ``size`` bytes held for ``holder``, for a
    large object without arrays (a chunk of records, of documents): `decode` loads it from
    there. None, with the slot free again, when it does not fit in ``size``, plain pickle
    refuses it, or no slot is free; the caller then uses `encode`.

    `encode` makes the pickle in private memory, which the caller copies into a slot when the
    message is too large for the pipe: for a chunk of 1.5 MB that is two fresh buffers, each
    page of them a page fault (about 40,000 of them for P1's 100 MB of records, half the
    sending process's CPU time), and two copies more. Here the pickler writes its frames into
    the slot as it goes: one copy, into pages already mapped."""
    slot = pool.take(size, holder)
    if slot is None:
        return None
    try:
        with memoryview(slot.memory) as whole, whole[HEADER : HEADER + slot.capacity] as free:
            out = _SlotWriter(free)
            pickle.Pickler(out, protocol=5).dump(obj)
    except BaseException as exc:
        slot.memory[_STATE_OFFSET] = _FREE
        if not isinstance(exc, Exception):
            raise
        return None  # _Full, or an object plain pickle refuses
    return _IN_SLOT, [(slot.name, 0, out.pos)]


class InSlot:
    """When a sender pickles a chunk's values straight into a slot (`encode_in_slot`): once
    its last chunk's pickle, without arrays, came to `IN_SLOT_MIN` bytes or more (then the
    pickle alone is a fresh buffer of pages to fault in, on each side of the pipe), sized by
    what that chunk took per item, with a margin. A chunk with arrays is left to `encode`
    (they cross as views of their own slots). After `TRIES` chunks in a row that did not fit,
    found no slot or needed cloudpickle, the sender stops trying.

    A stream (a process `transform`'s input, its outputs) has no window of chunks in flight:
    its messages queue in the pipe, which holds the sender back only by their size. There
    ``ahead`` caps its slots that wait for the receiver; past that a chunk goes in band, and
    the pipe holds the sender back as before."""

    MARGIN = 1.25
    TRIES = 3
    #: A stream's ``ahead``.
    STREAM_AHEAD = 4

    def __init__(self, ahead: int | None = None) -> None:
        self.per_item: float | None = None  # pickle bytes per item of the last chunk
        self.missed = 0  # tries in a row that failed (threads may add one each at once)
        self.ahead = ahead
        self._sent: deque[str] = deque(maxlen=2 * ahead if ahead else 0)  # its slots, recent

    def encode(
        self, obj: Any, items: int, pool: SlotPool, holder: int
    ) -> tuple[bytes, list[Place]] | None:
        """``obj`` (``items`` values: a chunk's list of them, or one value) pickled into a
        slot, or None: the sender then calls `encode` and `learn`."""
        per_item = self.per_item
        if per_item is None or self.missed >= self.TRIES or not items:
            return None
        size = int(per_item * items * self.MARGIN) + THRESHOLD
        if size < IN_SLOT_MIN:
            return None
        if self.ahead is not None and pool.held(set(self._sent)) >= self.ahead:
            return None
        encoded = encode_in_slot(obj, pool, holder, size)
        if encoded is None:
            self.per_item = None
            self.missed += 1
        else:
            self.per_item = encoded[1][0][2] / items
            self.missed = 0
            if self.ahead is not None:
                self._sent.append(encoded[1][0][0])
        return encoded

    def learn(self, data: bytes, places: list[Place], items: int) -> None:
        """What `encode` made of a chunk of ``items`` values."""
        self.per_item = None if places or not items else len(data) / items


class _Full(Exception):
    pass


class _SlotWriter:
    """The file `encode_in_slot` gives its pickler: writes into a slot's free bytes."""

    __slots__ = ("pos", "view")

    def __init__(self, view: memoryview) -> None:
        self.view = view
        self.pos = 0

    def write(self, data: Any) -> int:
        with memoryview(data) as raw:
            n = raw.nbytes
            end = self.pos + n
            if end > len(self.view):
                raise _Full
            self.view[self.pos : end] = raw.cast("B") if raw.format != "B" or raw.ndim != 1 else raw
        self.pos = end
        return n


def _load_from(buffer: Any) -> Any:
    return pickle.loads(buffer)


#: The `encode_in_slot` encoding: not a pickle (a pickle starts with the PROTO opcode), so that
#: `decode` tells it apart; its one place is the slot's pickle (`Mapper.load`).
_IN_SLOT = b"headrace: in a slot"


def _copy_into(memory: mmap.mmap, raw: memoryview) -> None:
    """Copy ``raw`` into a slot, after its header. With NumPy (loaded: it made the buffer) the
    copy lets go of the GIL, so the program's other threads (its source, the other workers'
    senders) go on meanwhile; it is also faster than a memoryview assignment (8 MiB: 1.6
    against 2.2 ms here)."""
    np = loaded_numpy()
    if np is None:
        memoryview(memory)[HEADER : HEADER + raw.nbytes] = raw
        return
    into = np.frombuffer(memory, np.uint8, count=raw.nbytes, offset=HEADER)
    np.copyto(into, np.frombuffer(raw, np.uint8))


def decode(data: bytes, places: list[Place], mapper: Mapper) -> Any:
    """The object `encode` made; its large buffers are views of the slots named in ``places``."""
    if not places:
        return pickle.loads(data)
    if data == _IN_SLOT:
        return mapper.load(*places[0])
    return pickle.loads(data, buffers=[mapper.view(*place) for place in places])
