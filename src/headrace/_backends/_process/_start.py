"""Start methods: which one, and its context (the forkserver preloads what workers need)."""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import multiprocessing.util
import os
import threading
import warnings
from collections.abc import Sequence
from typing import Any

from ... import _tempdirs
from . import _forkserver
from ._protocol import ENV_START_METHOD, START_METHODS, exit_if_importing_main


def default_start_method() -> str:
    """The start method when none is given: $HEADRACE_START_METHOD, else the one that is safe
    with threads (forkserver where it exists, spawn elsewhere)."""
    method = os.environ.get(ENV_START_METHOD)
    if method:
        if method not in START_METHODS:
            raise ValueError(f"${ENV_START_METHOD} must be one of {START_METHODS}, got {method!r}")
        return method
    if "forkserver" in multiprocessing.get_all_start_methods():
        return "forkserver"
    return "spawn"


def _context(method: str, modules: Sequence[str] = ()) -> Any:
    exit_if_importing_main(method)  # a worker re-running an unguarded main script ends here
    if method not in multiprocessing.get_all_start_methods():
        raise ValueError(f"start_method {method!r} is not available here")
    ctx = multiprocessing.get_context(method)
    _tempdirs.own_multiprocessing_tempdir()  # a killed program's pymp-* can then be swept
    if method == "forkserver":
        from multiprocessing import forkserver

        if getattr(forkserver._forkserver, "_forkserver_pid", None) is None:
            _start_forkserver(ctx, modules)
    elif method == "fork":
        others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
        if others:
            warnings.warn(
                f"start_method='fork' with other threads running ({', '.join(others[:5])}): a "
                "forked worker may deadlock on a lock one of them held. Use 'forkserver'.",
                RuntimeWarning,
                stacklevel=6,
            )
    return ctx


def _start_forkserver(ctx: Any, modules: Sequence[str]) -> None:
    """Start the forkserver now, without waiting for its imports. It imports the program's
    main module and the worker program once (see `_forkserver`), and dies with this program
    when its main thread starts it. A server that cannot start (e.g. its socket path in a long
    $TMPDIR is too long) fails again, and is reported, when the first worker starts."""
    from multiprocessing import forkserver

    if threading.current_thread() is threading.main_thread():
        os.environ[_forkserver.PARENT_ENV] = str(os.getpid())
    else:
        os.environ.pop(_forkserver.PARENT_ENV, None)
    # multiprocessing's own "__main__" preload is left out: `_forkserver` does it (the
    # server's only reader of MAIN_ENV, set just for its start).
    ctx.set_forkserver_preload([_forkserver.__name__, f"{__package__}._worker"])
    main = _forkserver.main_spec(modules)
    if main is not None:
        os.environ[_forkserver.MAIN_ENV] = main
    try:
        with contextlib.suppress(OSError):
            forkserver.ensure_running()
    finally:
        os.environ.pop(_forkserver.MAIN_ENV, None)


def prestart(fn: Any = None) -> None:
    """Start the forkserver now without waiting for it, when it is the default start method:
    it imports what workers need while the program goes on building its pipeline, and the
    first worker waits that much less. From the main thread only (see `_forkserver`)."""
    if threading.current_thread() is not threading.main_thread():
        return
    with contextlib.suppress(Exception):  # a bad $HEADRACE_START_METHOD is reported at run
        if default_start_method() == "forkserver":
            module = getattr(fn, "__module__", None)
            _context("forkserver", [module] if isinstance(module, str) else [])  # starts it
