"""headrace's temp folders carry their owner's pid, so a dead owner's folders can be found."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from headrace import _shm, _tempdirs


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


def test_make_early_makes_the_owner_and_its_multiprocessing_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the folder tempfile chooses (here it is loaded: its own `tempdir` counts), private,
    named with the owner; None where that folder cannot be used."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    made = _tempdirs.make_early("mp")
    assert made is not None
    owner, inner = map(Path, made)
    assert owner.parent == tmp_path and Path(inner).parent == owner
    assert _tempdirs.owner_pid(owner.name) == os.getpid() and inner.name.startswith("pymp-")
    assert owner.stat().st_mode & 0o777 == inner.stat().st_mode & 0o777 == 0o700
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    assert _tempdirs.make_early("mp") is None


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


KILLED_CONSUMER = """
import os, signal, sys
import headrace as hr

def slow(x):
    import time
    time.sleep(0.05)
    return x

if __name__ == "__main__":
    for i, x in enumerate(hr.from_iterable(range(10**6)).map(slow, workers=2,
                                                               backend="process")):
        if i == 3:
            print("RUNNING", os.getpid(), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
"""

NEXT_RUN = (
    "import headrace as hr; print(hr.from_iterable([1]).map(abs, backend='process').collect())"
)


def _entries(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def test_a_killed_consumers_multiprocessing_folder_is_swept(tmp_path: Path) -> None:
    """A SIGKILLed program leaves multiprocessing's ``pymp-*`` folder (no finalizer ran): it
    lies inside ``headrace-<pid>-mp-*``, which the next run and ``doctor --clean`` remove."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    script = tmp_path / "killed.py"
    script.write_text(KILLED_CONSUMER)
    env = dict(os.environ, TMPDIR=str(temp), HEADRACE_START_METHOD="forkserver")

    def killed_run() -> int:
        done = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env
        )
        assert done.returncode == -9, (done.returncode, done.stderr[-2000:])
        return int(done.stdout.split()[1])

    pid = killed_run()
    left = _entries(temp)
    assert len(left) == 1 and left[0].startswith(f"headrace-{pid}-mp-"), left
    assert [e.startswith("pymp-") for e in _entries(temp / left[0])] == [True]
    deadline = time.monotonic() + 5  # its workers and forkserver end
    while _shm.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)

    # The next run removes it (and leaves nothing of its own).
    done = subprocess.run(
        [sys.executable, "-c", NEXT_RUN], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.stdout.strip() == "[1]", done.stderr[-2000:]
    assert _entries(temp) == []

    # So does headrace doctor --clean.
    pid = killed_run()
    assert [e.split("-")[1] for e in _entries(temp)] == [str(pid)]
    done = subprocess.run(
        [sys.executable, "-m", "headrace", "doctor", "--clean"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert _entries(temp) == [], (done.stdout[-2000:], done.stderr[-2000:])


def test_a_folder_made_before_headrace_is_left_alone() -> None:
    """A program whose multiprocessing temp folder exists already keeps it: headrace never
    moves or removes a folder it did not make."""
    code = (
        "import multiprocessing.util as u, headrace as hr\n"
        "before = u.get_temp_dir()\n"
        "hr.from_iterable([1]).map(abs, backend='process').collect()\n"
        "assert u.get_temp_dir() == before and '/pymp-' in before, before\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]
