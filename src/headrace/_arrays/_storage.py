"""Where the arrays of one `ArrayJob` live, and how a worker maps them.

Owns: `Placement` (a picklable description of one array: name, shape, dtype, where its bytes
are), `Store` (the parent's side: shares inputs, allocates outputs, removes everything on
`close`), `open_view` (a worker's side: map a placement once, as a read-only or writable
array) and `sweep_stale_folders` (what a killed parent left in the temp dir).

Where the bytes go, by backend:

    inline / thread   "local": the parent's own arrays, handed over as views (no copy at all)
    process           "shm":   a segment in /dev/shm named hr-<token>-<pid>-<suffix>, made by
                               `_shm.create` (0600, reserved up front, registered for clean-up)
                      "file":  a file in a private 0700 folder headrace-<token>-*, for arrays
                               larger than /dev/shm can hold (or storage="file"); also an input
                               that already is a file memmap is mapped where it is, not copied

The token starts with the owner's pid, so a dead owner's segments and folders are recognised
and removed by the next run (`_shm.sweep_stale`, `sweep_stale_folders`). Imports the core's
`_shm` and `_errors` only.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .. import _shm
from .._shm import pid_alive
from ._stripes import create_stripes, map_stripes, stripe_lengths

Kind = Literal["local", "shm", "file"]
Storage = Literal["auto", "shm", "file"]
STORAGES: tuple[Storage, ...] = ("auto", "shm", "file")

#: An array goes to /dev/shm only if it takes at most this fraction of the space free there;
#: larger ones go to a file (a full /dev/shm makes every other program on the machine fail).
SHM_FRACTION = 0.5
#: Name prefix of the private folders that hold file-backed arrays.
FOLDER_PREFIX = "headrace-"
#: A file in each folder that says it is an ArrayJob's (the sweep removes only such folders).
MARKER = ".headrace-arrays"


@dataclass(frozen=True)
class Placement:
    """One array of a job, as a worker needs it to map the array (picklable unless local)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    kind: Kind
    where: str = ""  # segment name (shm) or file path (file)
    offset: int = 0
    order: Literal["C", "F"] = "C"
    writable: bool = False
    array: np.ndarray[Any, Any] | None = field(default=None, compare=False)  # local only
    #: shm only: the segments (name, bytes) whose bytes, side by side, hold the array; empty
    #: when ``where`` alone does.
    parts: tuple[tuple[str, int], ...] = ()

    def __reduce__(self) -> Any:
        if self.kind == "local":
            raise TypeError(f"array {self.name!r} lives in this process and cannot be sent")
        fields = (self.name, self.shape, self.dtype, self.kind, self.where, self.offset)
        return (Placement, (*fields, self.order, self.writable, None, self.parts))


def _free_shm() -> int:
    try:
        st = os.statvfs(_shm.SHM_DIR)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def open_view(p: Placement) -> np.ndarray[Any, Any]:
    """The array of placement ``p``, mapped into this process (read-only unless writable)."""
    if p.kind == "local":
        assert p.array is not None
        view = p.array.view()
        if not p.writable:
            view.flags.writeable = False
        return view
    if p.kind == "shm" and p.parts:
        # Through a flat uint8 array whose base is the (read-only) buffer: NumPy then refuses
        # to make an input writable again, as with a read-only mmap.
        flat = np.frombuffer(map_stripes(p.parts, writable=p.writable), np.uint8)
        return np.ndarray(p.shape, p.dtype, buffer=flat, offset=p.offset, order=p.order)
    if p.kind == "shm":
        memory = _shm.attach(p.where) if p.writable else _map_readonly(_shm.shm_path(p.where))
        return np.ndarray(p.shape, p.dtype, buffer=memory, offset=p.offset, order=p.order)
    mode: Literal["r", "r+"] = "r+" if p.writable else "r"
    return np.memmap(p.where, p.dtype, mode, p.offset, p.shape, p.order)


def _map_readonly(path: str) -> mmap.mmap:
    # A read-only mapping: an input cannot be made writable again in a worker.
    fd = os.open(path, os.O_RDONLY)
    try:
        return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)


def _file_memmap(array: np.ndarray[Any, Any]) -> tuple[str, int, Literal["C", "F"]] | None:
    """(path, offset, order) when ``array`` is a whole file memmap that workers can map where it
    is (e.g. from ``np.load(path, mmap_mode="r")``); None otherwise."""
    base: object = array.base
    if not isinstance(array, np.memmap) or not isinstance(base, mmap.mmap):
        return None
    if getattr(array, "mode", None) == "c":
        return None  # copy-on-write: the caller's changes are not in the file
    filename = getattr(array, "filename", None)
    if not filename or not os.path.isfile(filename):
        return None
    if array.flags.c_contiguous:
        return filename, int(array.offset), "C"
    if array.flags.f_contiguous:
        return filename, int(array.offset), "F"
    return None


class Store:
    """The parent's side of a job's arrays: what it made, and how to remove all of it."""

    def __init__(self, *, local: bool, storage: Storage) -> None:
        self.local = local
        self.storage = storage
        self.token = _shm.run_token()
        self.folder: Path | None = None
        self.closed = False

    def _suffix(self) -> str:
        return secrets.token_hex(4)

    def share_input(self, name: str, array: np.ndarray[Any, Any]) -> Placement:
        if self.local:
            view = array.view()
            view.flags.writeable = False
            return Placement(name, array.shape, array.dtype, "local", array=view)
        found = _file_memmap(array)
        if found is not None:
            path, offset, order = found
            return Placement(name, array.shape, array.dtype, "file", path, offset, order)
        plain = array.flags.c_contiguous and array.size and not array.dtype.hasobject
        content = array.reshape(-1).view(np.uint8).data if plain else None
        placement = self._allocate(name, array.shape, array.dtype, writable=False, content=content)
        if content is None:
            assert placement.array is not None
            np.copyto(placement.array, array, casting="no")
        return placement

    def new_output(self, name: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> Placement:
        if self.local:
            return Placement(
                name, shape, dtype, "local", writable=True, array=np.zeros(shape, dtype)
            )
        return self._allocate(name, shape, dtype, writable=True)

    # --- allocation ---------------------------------------------------------------------

    def _allocate(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: np.dtype[Any],
        *,
        writable: bool,
        content: memoryview | None = None,
    ) -> Placement:
        """A new shared array, zero-filled or holding ``content`` (its bytes, in C order); its
        placement carries the parent's own mapping."""
        size = max(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, 1)
        use_shm = self.storage == "shm" or (
            self.storage == "auto" and size <= _free_shm() * SHM_FRACTION
        )
        lengths = stripe_lengths(size) if content is not None else [size]
        if use_shm and len(lengths) > 1:
            assert content is not None
            names = [f"hr-{self.token}-{os.getpid()}-{self._suffix()}" for _ in lengths]
            try:
                create_stripes(names, lengths, content)
            except OSError:
                if self.storage == "shm":
                    raise
            else:
                parts = tuple(zip(names, lengths, strict=True))
                placement = Placement(
                    name, shape, dtype, "shm", names[0], 0, "C", writable, None, parts
                )
                return replace(placement, array=open_view(placement))
        elif use_shm:
            segment = f"hr-{self.token}-{os.getpid()}-{self._suffix()}"
            try:
                memory = _shm.create(segment, size, content)
            except OSError:
                if self.storage == "shm":
                    raise
            else:
                array = np.ndarray(shape, dtype, buffer=memory)
                return Placement(name, shape, dtype, "shm", segment, 0, "C", writable, array)
        path = self._folder() / f"{name}-{self._suffix()}.dat"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)  # reserve the disk space now, not on first write
            if content is not None:
                _shm.write_all(fd, content)
        finally:
            os.close(fd)
        array = np.memmap(path, dtype, "r+", 0, shape)
        return Placement(name, shape, dtype, "file", str(path), 0, "C", writable, array)

    def _folder(self) -> Path:
        if self.folder is None:
            folder = Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{self.token}-"))  # 0700
            (folder / MARKER).touch(mode=0o600)
            self.folder = folder
        return self.folder

    def close(self) -> None:
        """Remove every segment and file of the job. Arrays the parent still holds stay valid
        (their mappings live on until they are garbage collected); only the names go."""
        if self.closed:
            return
        self.closed = True
        _shm.remove_run(self.token)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _owner(name: str) -> int | None:
    parts = name.split("-")
    if len(parts) < 3 or parts[0] + "-" != FOLDER_PREFIX or not parts[1].isdigit():
        return None
    return int(parts[1])


def stale_folders(root: str | None = None) -> list[Path]:
    """ArrayJob folders in the temp dir whose owning process is dead."""
    base = Path(root or tempfile.gettempdir())
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(base):
            pid = _owner(entry.name)
            if pid is None or pid_alive(pid):
                continue
            path = Path(entry.path)
            with contextlib.suppress(OSError):
                if (
                    entry.is_dir(follow_symlinks=False)
                    and entry.stat(follow_symlinks=False).st_uid == os.getuid()
                    and (path / MARKER).is_file()
                ):
                    found.append(path)
    return sorted(found)


def sweep_stale_folders(root: str | None = None) -> int:
    """Remove what `stale_folders` finds; how many folders were removed."""
    removed = 0
    for path in stale_folders(root):
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
    return removed
