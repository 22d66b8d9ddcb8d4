"""Imported first by the forkserver that starts headrace's process workers (its preload).

A worker forked by the forkserver is the forkserver's child, so the kernel's parent-death
signal a worker asks for fires when the forkserver dies, not when the program that runs the
pipeline does; and a worker stuck in a C call that holds the GIL cannot run its own watcher
thread. Here the forkserver asks the kernel to kill it when that program dies, so that the
kernel kills the whole chain. Only for a forkserver started from the program's main thread
(the signal follows the thread that made the process, and a worker thread may end early):
the program says so in `PARENT_ENV`. Imports nothing from headrace.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal

#: Set by the program (to its pid) when it starts the forkserver from its main thread.
PARENT_ENV = "HEADRACE_FORKSERVER_PARENT"
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    parent = os.environ.get(PARENT_ENV)
    if parent is None or parent != str(os.getppid()):
        return
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if str(os.getppid()) != parent:  # the program died before the signal was set
            os._exit(1)


die_with_parent()
