"""Imported first by the forkserver that starts headrace's process workers (its preload).

    program                                   forkserver (a fresh interpreter)
    -------                                   --------------------------------
    sets PARENT_ENV, MAIN_ENV; spawns it ---> imports this module: die_with_parent(),
                                                import_main() (the program's main module)
                                              imports the worker program (`_worker`)
    Process.start() -- fds over a socket ---> forks a worker: it finds all of that loaded

Two things happen here, in the server, before it forks a worker:

1. A worker forked by the forkserver is the forkserver's child, so the kernel's parent-death
   signal a worker asks for fires when the forkserver dies, not when the program that runs the
   pipeline does; and a worker stuck in a C call that holds the GIL cannot run its own watcher
   thread. Here the forkserver asks the kernel to kill it when that program dies, so that the
   kernel kills the whole chain. Only for a forkserver started from the program's main thread
   (the signal follows the thread that made the process, and a worker thread may end early):
   the program says so in `PARENT_ENV`.
2. The server imports the program's main module once, as ``__mp_main__`` (what multiprocessing
   does in each worker): a worker forked afterwards finds it loaded and skips that import.
   multiprocessing means its forkserver to do the same (its ``"__main__"`` preload), but before
   Python 3.14 that preload never receives the module (a key mismatch), so every worker paid
   it. The program names its main module in `MAIN_ENV`. A script that starts a pipeline while
   it is imported (no main guard) is stopped here by `MainStartsRun`: the server gives up on
   it, and each worker reports the missing guard as before.

Imports nothing of headrace (`_start`'s guard reads `IMPORTING_MAIN` here).
"""

from __future__ import annotations

import contextlib
import importlib
import marshal
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

#: Set by the program (to its pid) when it starts the forkserver from its main thread.
PARENT_ENV = "HEADRACE_FORKSERVER_PARENT"
#: Set by the program while it starts the forkserver: its pid and main module (`main_spec`).
MAIN_ENV = "HEADRACE_FORKSERVER_MAIN"
#: Longest `MAIN_ENV` value sent (Linux takes 128 KiB per environment string); longer (a huge
#: sys.argv), the server imports nothing more and each worker imports the main module.
MAX_SPEC = 64 * 1024
_PR_SET_PDEATHSIG = 1
#: True while this server imports the program's main module (`_start`'s guard reads it).
IMPORTING_MAIN = False


def die_with_parent() -> None:
    parent = os.environ.get(PARENT_ENV)
    if parent is None or parent != str(os.getppid()):
        return
    with contextlib.suppress(Exception):
        import ctypes  # here: the program that imports this module to start the server needs none

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if str(os.getppid()) != parent:  # the program died before the signal was set
            os._exit(1)


def main_spec(modules: Sequence[str] = (), *, by_value: bool = False) -> str | None:
    """What a forkserver started now by this program should import (for `MAIN_ENV`): the
    program's main module, found the way multiprocessing finds it for a worker (none for
    an interactive session, ``python -c``, a package's ``__main__``), those of ``modules``
    (the modules of the first process stage's function) that this program has imported, and
    cloudpickle when that function crosses ``by_value`` (a worker needs cloudpickle to load
    it, and imports it only then); None when there is nothing to import."""
    main = sys.modules.get("__main__")
    spec: dict[str, Any] = {
        "parent": os.getpid(),
        "sys_path": [entry for entry in sys.path if isinstance(entry, str)],
        "sys_argv": [str(arg) for arg in sys.argv],
    }
    name = getattr(getattr(main, "__spec__", None), "name", None)
    path = getattr(main, "__file__", None)
    if name is not None:
        if name != "__main__" and not name.endswith(".__main__"):  # as multiprocessing does
            spec["name"] = name
    elif path is not None:
        spec["path"] = os.path.normpath(os.path.abspath(path))
    spec["modules"] = [
        module
        for module in modules
        if module in sys.modules
        and module not in ("__main__", "__mp_main__", "builtins", name)
        and module.partition(".")[0] != "headrace"
    ] + (["cloudpickle"] if by_value else [])  # not imported here yet, maybe
    if "name" not in spec and "path" not in spec and not spec["modules"]:
        return None
    # Marshalled (the server is this interpreter, and every interpreter has marshal loaded:
    # nothing to import on either side), in hex (an environment string).
    raw = marshal.dumps(spec).hex()
    return raw if len(raw) <= MAX_SPEC else None


def import_main() -> None:
    """In the forkserver: import the program's main module as a worker would, and the
    modules of its first stage's function (see above)."""
    raw = os.environ.pop(MAIN_ENV, None)  # the workers forked from here must not see it
    if raw is None:
        return
    with contextlib.suppress(Exception):
        spec = marshal.loads(bytes.fromhex(raw))
        if spec["parent"] != os.getppid():  # not the server that program started
            return
        _import_program(spec)


def _import_program(spec: dict[str, Any]) -> None:
    global IMPORTING_MAIN
    from multiprocessing import process, spawn, util

    util._close_stdin()  # type: ignore[attr-defined]  # as in a worker: not for the script
    sys.path[:] = [str(entry) for entry in spec["sys_path"]]  # what a worker sets
    sys.argv[:] = [str(entry) for entry in spec["sys_argv"]]
    current = process.current_process()
    current._inheriting = True  # type: ignore[attr-defined]  # as in a worker's bootstrap
    IMPORTING_MAIN = True
    try:
        old_main = sys.modules["__main__"]
        try:
            if "name" in spec:
                spawn._fixup_main_from_name(str(spec["name"]))  # type: ignore[attr-defined]
            elif "path" in spec:
                spawn._fixup_main_from_path(str(spec["path"]))  # type: ignore[attr-defined]
        except BaseException:  # no guard, or it fails: each worker imports it itself
            sys.modules["__main__"] = old_main
            sys.modules.pop("__mp_main__", None)
        for module in spec["modules"]:
            with contextlib.suppress(BaseException):  # a worker imports it, and says why not
                importlib.import_module(str(module))
    finally:
        IMPORTING_MAIN = False
        del current._inheriting  # type: ignore[attr-defined]
        for stream in (sys.stdout, sys.stderr):  # or each worker would print it again
            with contextlib.suppress(Exception):
                stream.flush()


die_with_parent()
import_main()
