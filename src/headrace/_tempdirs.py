"""headrace's private temporary folders, named so that a dead owner's folders can be found.

Owns: `make` (a fresh 0700 folder ``headrace-<owner pid>-<kind>-<random>`` in the temp dir),
`owner_pid`, `stale` (the folders whose owner process is dead) and `sweep_stale`. The owner's
pid is in the name, as in the names of shared-memory segments (`_shm`), so that a later
process can tell a folder a killed program left from one a live program still uses: a folder
counts as stale only when its owner is dead and it belongs to this user. A folder named in any
other way (an older headrace's, or one a test suite made) has no known owner and is never
removed. The first `make` of a process removes the stale folders it finds (what a killed
program left is cleaned by the next one). `own_multiprocessing_tempdir` puts multiprocessing's
own temp folder (``pymp-*``, the forkserver's socket) inside such a folder (``-mp-``), so that
a SIGKILLed program's is removed the same way. Imports only `_shm` from headrace, on use, and
`tempfile`, `shutil` and multiprocessing on use too: the first process stage imports this module
before it spawns the forkserver (`make_early`), and needs none of them for that.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

PREFIX = "headrace-"

_swept = False
_swept_lock = threading.Lock()


def make(kind: str, *, sweep: bool = True) -> str:
    """A fresh private (0700) folder ``headrace-<pid>-<kind>-<random>`` in the temp dir
    (``sweep``: first `sweep_once`)."""
    import tempfile

    if sweep:
        sweep_once()
    return tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-{kind}-")


def make_early(kind: str) -> tuple[str, str] | None:
    """`make` (no sweep) and a ``pymp-*`` folder in it, without importing `tempfile` (the
    forkserver's spawn, `_backends._process._launch`): in the folder tempfile would choose
    when it is its first choice ($TMPDIR, $TEMP or $TMP, else /tmp), and None when that one
    cannot be used (tempfile would choose another)."""
    if "tempfile" in sys.modules:  # loaded already: it says (and honours `tempfile.tempdir`)
        root = sys.modules["tempfile"].gettempdir()
    else:
        names = ("TMPDIR", "TEMP", "TMP")
        root = os.path.abspath(next((os.environ[n] for n in names if os.environ.get(n)), "/tmp"))
    token = os.urandom(4).hex()
    owner = os.path.join(root, f"{PREFIX}{os.getpid()}-{kind}-{token}")
    inner = os.path.join(owner, f"pymp-{token}")
    try:
        os.mkdir(owner, 0o700)
    except OSError:
        return None
    try:
        os.mkdir(inner, 0o700)
    except OSError:
        os.rmdir(owner)
        return None
    return owner, inner


def sweep_once() -> None:
    """Remove the stale folders (`sweep_stale`), the first time this process asks."""
    global _swept
    with _swept_lock:
        first, _swept = not _swept, True
    if first:
        sweep_stale()


_mp_lock = threading.Lock()


def own_multiprocessing_tempdir(made: tuple[str, str] | None = None) -> None:
    """Have multiprocessing make its temp folder of this process (``pymp-*``: the forkserver's
    socket, a listener's) inside a headrace folder named with this process's pid, so that the
    folder a SIGKILLed program leaves is removed by the next headrace run or ``headrace doctor
    --clean`` (a plain ``pymp-*`` name says nothing of its owner). Both go at a clean exit, by
    multiprocessing's own finalizer. A no-op once this process has a multiprocessing temp
    folder (one made before headrace ran is left as it is). ``made``: the pair `make_early`
    made (it holds the forkserver's socket), to be used as that folder, and removed at exit
    in any case. It sweeps nothing: the caller calls `sweep_once` after what waits for this
    folder (the forkserver) is started."""
    import multiprocessing.util
    import shutil
    import tempfile

    config = multiprocessing.current_process()._config  # type: ignore[attr-defined]
    with _mp_lock:
        if made is not None:
            owner = made[0]
            if config.get("tempdir") is None:
                config["tempdir"] = made[1]
        elif config.get("tempdir") is not None:
            return
        else:
            owner = make("mp", sweep=False)
            config["tempdir"] = tempfile.mkdtemp(prefix="pymp-", dir=owner)
    # multiprocessing's own clean-up of its folder runs at this priority too (-100).
    multiprocessing.util.Finalize(
        None, shutil.rmtree, args=(owner,), kwargs={"ignore_errors": True}, exitpriority=-100
    )


def owner_pid(name: str) -> int | None:
    """The pid in a folder name made by `make` (None: not named by `make`)."""
    parts = name.split("-")
    if len(parts) < 4 or parts[0] + "-" != PREFIX or not parts[1].isdigit():
        return None
    return int(parts[1])


def stale(folder: str | None = None) -> list[str]:
    """Paths of this user's headrace folders in ``folder`` (the temp dir) whose owner is dead.

    Never a folder of a live process, of another user, or without an owner in its name.
    """
    import tempfile

    from ._shm import pid_alive  # here: see the module's docstring

    root = folder if folder is not None else tempfile.gettempdir()
    try:
        entries = list(os.scandir(root))
    except OSError:
        return []
    found = []
    for entry in entries:
        pid = owner_pid(entry.name)
        if pid is None or pid == os.getpid():
            continue
        with contextlib.suppress(OSError):
            mine = entry.stat(follow_symlinks=False).st_uid == os.getuid()
            if mine and entry.is_dir(follow_symlinks=False) and not pid_alive(pid):
                found.append(os.path.join(root, entry.name))
    return sorted(found)


def sweep_stale(folder: str | None = None) -> int:
    """Remove the folders `stale` finds; how many were removed."""
    import shutil

    removed = 0
    for path in stale(folder):
        with contextlib.suppress(OSError):
            shutil.rmtree(path)
            removed += 1
    return removed
