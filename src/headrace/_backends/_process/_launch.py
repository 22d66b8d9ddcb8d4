"""Spawn multiprocessing's forkserver before importing multiprocessing (CPython 3.11-3.13, Linux).

The forkserver's boot (a fresh interpreter and its imports) is most of the time to a program's
first process result, and it starts only once the program has spawned it. multiprocessing's
own start (`ForkServer.ensure_running`) needs `multiprocessing.forkserver` imported first: about
20 ms of the program's time, before the spawn. Here the program spawns the very same server with
what it has loaded, imports multiprocessing while the server boots, and then hands the server
to multiprocessing (`adopt`) as if `ensure_running` had started it:

    program                                             forkserver (a fresh interpreter)
    -------                                             --------------------------------
    spawn(): a private folder, the listener socket,
      the alive pipe; posix_spawn(the server's     ---> python -c "from multiprocessing.forkserver
      command)                                          import main; main(listener, alive, ...)"
    imports multiprocessing                             boots: its imports, headrace's preload
    adopt(): ForkServer's state, multiprocessing's
      temp folder                                       serves: forks a worker per request
    the first worker starts (multiprocessing)     ---> (over the listener socket)

What `spawn` does is what multiprocessing 3.11-3.13 does (`ForkServer.ensure_running`,
`util.spawnv_passfds`, `util.get_temp_dir`, `connection.arbitrary_address`, the same code in
all three): the same command and interpreter flags, the same executable, a 0600 socket in a 0700
folder, and only the listener and the alive pipe open in the server (with 0, 1 and 2); so it
applies only where that is known: CPython `VERSIONS` on Linux (3.14's server takes an
authentication key as well), and only while this program has not imported
multiprocessing (afterwards the usual start costs little more, and it honours what the program
may have changed: `set_executable`, a patched `spawnv_passfds`, a temp folder of its own).
Anything unusual (a socket path too long, a folder that cannot be made) returns None: the
caller then starts the server the usual way.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, NamedTuple

from ... import _tempdirs

#: The Python versions whose multiprocessing starts its forkserver as `spawn` does.
VERSIONS = ((3, 11), (3, 12), (3, 13))
#: The server's command, as multiprocessing writes it (`ForkServer.ensure_running`).
COMMAND = "from multiprocessing.forkserver import main; main(%d, %d, %r, **%r)"
#: The interpreter flags `subprocess._args_from_interpreter_flags` turns into arguments;
#: when none is set (and no -W or -X option: 3.13's ``-X gil`` is one), there are none.
_FLAGS = (
    "optimize",
    "debug",
    "dont_write_bytecode",
    "no_site",
    "verbose",
    "bytes_warning",
    "quiet",
    "isolated",
    "ignore_environment",
    "no_user_site",
    "safe_path",
    "dev_mode",
)


class Spawned(NamedTuple):
    """A forkserver this program spawned, not yet handed to multiprocessing."""

    pid: int
    address: str  # the listener socket's path
    alive_w: int  # the write end of the alive pipe (the server exits when it closes)
    owner: str  # headrace's folder (`_tempdirs`)
    tempdir: str  # multiprocessing's temp folder in it (``pymp-*``), holding the socket
    preload: list[str]


def applies() -> bool:
    """Whether `spawn` can start the server here (see the module's docstring)."""
    return (
        sys.platform == "linux"
        and sys.implementation.name == "cpython"
        and sys.version_info[:2] in VERSIONS
        and "multiprocessing" not in sys.modules
    )


def spawn(preload: list[str]) -> Spawned | None:
    """Spawn the forkserver with ``preload`` as its preload, in the current environment; None
    when `applies` says no or a step fails (nothing is left then)."""
    if not applies():
        return None
    folders = _tempdirs.make_early("mp")
    if folders is None:
        return None
    owner, tempdir = folders
    address = os.path.join(tempdir, f"listener-{os.urandom(4).hex()}")
    if len(os.fsencode(address)) >= 108:  # sun_path: multiprocessing would fail as well
        _remove(owner, tempdir)
        return None
    import _socket

    listener = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    alive_r, alive_w = os.pipe()
    try:
        listener.bind(address)
        os.chmod(address, 0o600)
        listener.listen()
        passed = (listener.fileno(), alive_r)
        # Inheritable only for the spawn (a subprocess another thread starts meanwhile may
        # inherit them too: a read end and a listener, which keep nothing waiting).
        for fd in passed:
            os.set_inheritable(fd, True)
        command = COMMAND % (*passed, preload, {})  # no main_path: "__main__" is not preloaded
        args = [sys.executable, *interpreter_flags(), "-c", command]
        pid = os.posix_spawn(sys.executable, args, os.environ, file_actions=_close_others(passed))
    except OSError:
        os.close(alive_w)
        _remove(owner, tempdir, address)
        return None
    finally:
        listener.close()
        os.close(alive_r)
    return Spawned(pid, address, alive_w, owner, tempdir, preload)


def interpreter_flags() -> list[str]:
    """The arguments that give the server this interpreter's flags, as multiprocessing's
    (`subprocess._args_from_interpreter_flags`, imported only when a flag is set)."""
    if (
        not sys.warnoptions
        and not sys._xoptions
        and not any(getattr(sys.flags, name) for name in _FLAGS)
    ):
        return []
    import subprocess

    return list(subprocess._args_from_interpreter_flags())  # type: ignore[attr-defined]


def _close_others(passed: tuple[int, ...]) -> list[tuple[int, int]]:
    """posix_spawn's actions closing, in the server, every inheritable descriptor of this
    program but ``passed`` and 0-2 (multiprocessing spawns with ``close_fds``): one kept open
    there could keep the other end of a pipe waiting for as long as the program runs."""
    actions = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in passed:
            try:
                inheritable = os.get_inheritable(fd)
            except OSError:  # listdir's own descriptor, closed since
                continue
            if inheritable:  # closing one that is gone by then is no error (glibc, musl)
                actions.append((os.POSIX_SPAWN_CLOSE, fd))
    return actions


def adopt(spawned: Spawned) -> bool:
    """Hand ``spawned`` to multiprocessing as its forkserver, and its folder as this
    process's multiprocessing temp folder (`_tempdirs`). False, and the server stopped, when
    multiprocessing has a forkserver already (another thread started one meanwhile)."""
    from multiprocessing import forkserver

    server: Any = forkserver._forkserver  # its private state, set as ensure_running sets it
    with server._lock:  # as ensure_running holds it: one adopter (or starter) at a time
        mine = server._forkserver_pid is None
        if mine:
            server._forkserver_address = spawned.address
            server._forkserver_alive_fd = spawned.alive_w
            server._forkserver_pid = spawned.pid
            server._preload_modules = list(spawned.preload)
    if not mine:
        os.close(spawned.alive_w)  # the server exits when it reads the end of its pipe
        os.waitpid(spawned.pid, 0)
        _remove(spawned.owner, spawned.tempdir, spawned.address)
        return False
    _tempdirs.own_multiprocessing_tempdir((spawned.owner, spawned.tempdir))
    return True


def _remove(owner: str, tempdir: str, address: str | None = None) -> None:
    for path, remove in ((address, os.unlink), (tempdir, os.rmdir), (owner, os.rmdir)):
        if path is not None:
            with contextlib.suppress(OSError):
                remove(path)
