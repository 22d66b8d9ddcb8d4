"""Atomic outputs: write to a temporary name beside the output, flush, then rename into place.

Owns: `temporary_path` (a name that keeps the output's suffix, so ``np.save`` and friends do not
append one), `commit` (fsync and rename), `remove_strays` (temporaries of dead processes).
A temporary carries the writer's pid, so a sweep never removes the file of a live writer.
Imports nothing from headrace.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path

from .._shm import pid_alive

#: Marks a temporary output: ``.<stem>.hrtmp-<pid>-<token><suffix>``.
TEMP_MARK = ".hrtmp-"
_TEMP = re.compile(r"^\..*\.hrtmp-(\d+)-[0-9a-f]+(\.[^/]*)?$")
#: Compression suffixes kept together with the suffix before them (``.fits.gz``).
_COMPRESSED = frozenset({".gz", ".bz2", ".xz", ".zst", ".lz4"})


def output_suffix(name: str) -> str:
    suffixes = Path(name).suffixes
    if not suffixes:
        return ""
    if suffixes[-1].lower() in _COMPRESSED and len(suffixes) >= 2:
        return "".join(suffixes[-2:])
    return suffixes[-1]


def temporary_path(final: Path) -> Path:
    """A fresh temporary name in ``final``'s directory with ``final``'s suffix."""
    suffix = output_suffix(final.name)
    stem = final.name[: len(final.name) - len(suffix)] if suffix else final.name
    token = secrets.token_hex(4)
    return final.with_name(f".{stem}{TEMP_MARK}{os.getpid()}-{token}{suffix}")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems refuse fsync on a directory
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def commit(temporary: Path, final: Path, *, fsync: bool) -> None:
    """Rename ``temporary`` to ``final`` (replacing what is there); with ``fsync``, flush it to
    the disk first and the folder after, so that the output also survives a power loss."""
    if fsync:
        fd = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.replace(temporary, final)
    if fsync:
        _fsync_dir(final.parent)


def discard(temporary: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()


def remove_strays(folders: set[Path]) -> list[Path]:
    """Remove the temporaries in ``folders`` whose writer is no longer running."""
    removed = []
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            match = _TEMP.match(entry.name)
            if match is None or not entry.is_file(follow_symlinks=False):
                continue
            if pid_alive(int(match.group(1))):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed
