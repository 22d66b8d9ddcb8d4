"""headrace's temp folders carry their owner's pid, so a dead owner's folders can be found."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from headrace import _tempdirs


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_make_names_the_owner_and_is_private() -> None:
    path = Path(_tempdirs.make("unit"))
    try:
        assert path.name.startswith(f"headrace-{os.getpid()}-unit-")
        assert _tempdirs.owner_pid(path.name) == os.getpid()
        assert path.stat().st_mode & 0o777 == 0o700
        assert str(path) not in _tempdirs.stale(str(path.parent)), "a live owner's folder"
    finally:
        shutil.rmtree(path)


def test_only_dead_owners_folders_are_stale(tmp_path: Path) -> None:
    dead = dead_pid()
    stale = tmp_path / f"headrace-{dead}-zmq-abc123"
    live = tmp_path / f"headrace-{os.getppid()}-zmq-def456"
    unnamed = tmp_path / "headrace-tests-xyz"  # no owner in the name: never touched
    not_ours = tmp_path / f"other-{dead}-zmq-abc"
    a_file = tmp_path / f"headrace-{dead}-zmq-file"
    for folder in (stale, live, unnamed, not_ours):
        folder.mkdir()
        (folder / "s").write_text("x")
    a_file.write_text("x")

    assert _tempdirs.stale(str(tmp_path)) == [str(stale)]
    assert _tempdirs.sweep_stale(str(tmp_path)) == 1
    assert not stale.exists()
    assert live.is_dir() and unnamed.is_dir() and not_ours.is_dir() and a_file.is_file()


def test_owner_pid_parses_only_our_names() -> None:
    assert _tempdirs.owner_pid("headrace-123-demo-x1y2") == 123
    assert _tempdirs.owner_pid("headrace-demo-x1y2") is None
    assert _tempdirs.owner_pid("headrace-123") is None
    assert _tempdirs.owner_pid("hr-123-abc-4-5") is None
