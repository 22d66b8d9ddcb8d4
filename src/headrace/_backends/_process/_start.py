"""Start methods: which one, its context, and the main-script guard (the forkserver preloads
what workers need, see `_forkserver`).

The first process stage of a program starts the forkserver (`prestart`) while the pipeline is
still being built, so this module imports only what that start needs, and multiprocessing only
after the server is spawned where it can (`_launch`): the server boots (a fresh interpreter and
its imports, most of the time to the first result) while the program goes on. multiprocessing's
resource tracker, which the server needs only once it forks workers, is spawned after it and at
a lower priority.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from ... import _tempdirs
from ..._types import held_by_name
from . import _forkserver, _launch

START_METHODS = ("forkserver", "spawn", "fork")
ENV_START_METHOD = "HEADRACE_START_METHOD"
#: The exit code of a worker process that, while importing the program's main script (spawn
#: and forkserver workers do), was asked to start process workers itself: the script runs its
#: pipeline at import, without an ``if __name__ == "__main__":`` guard. Its supervisor says so.
NO_GUARD_EXIT = 87
NO_GUARD_HINT = 'add `if __name__ == "__main__":` above the code that runs the pipeline'


def default_start_method() -> str:
    """The start method when none is given: $HEADRACE_START_METHOD, else the one that is safe
    with threads (forkserver where it exists, spawn elsewhere)."""
    method = os.environ.get(ENV_START_METHOD)
    if method:
        if method not in START_METHODS:
            raise ValueError(f"${ENV_START_METHOD} must be one of {START_METHODS}, got {method!r}")
        return method
    if _launch.applies():  # Linux: it has forkserver (and multiprocessing is not loaded yet)
        return "forkserver"
    import multiprocessing

    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _context(method: str, modules: Sequence[str] = (), by_value: bool = False) -> Any:
    exit_if_importing_main(method)  # a worker re-running an unguarded main script ends here
    spawned = None
    if method == "forkserver" and _launch.applies():  # multiprocessing not loaded: no server
        spawned = _spawn_forkserver(modules, by_value)
    import multiprocessing

    if method not in multiprocessing.get_all_start_methods():
        raise ValueError(f"start_method {method!r} is not available here")
    ctx = multiprocessing.get_context(method)
    if spawned is not None and _launch.adopt(spawned):
        _start_tracker()  # not started before: multiprocessing was not loaded
    else:
        _tempdirs.own_multiprocessing_tempdir()  # a killed program's pymp-* can then be swept
        if method == "forkserver":
            from multiprocessing import forkserver

            if getattr(forkserver._forkserver, "_forkserver_pid", None) is None:
                _start_forkserver(ctx, modules, by_value)
    _tempdirs.sweep_once()  # what killed programs left: after the server is on its way
    if method == "fork":
        others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
        if others:
            warnings.warn(
                f"start_method='fork' with other threads running ({', '.join(others[:5])}): a "
                "forked worker may deadlock on a lock one of them held. Use 'forkserver'.",
                RuntimeWarning,
                stacklevel=6,
            )
    return ctx


#: What the forkserver preloads: `_forkserver` first, then the worker program. multiprocessing's
#: own "__main__" preload is left out: `_forkserver` does it (the server's only reader of
#: MAIN_ENV, set just for its start).
PRELOAD = [_forkserver.__name__, f"{__package__}._worker"]


@contextlib.contextmanager
def _server_environment(modules: Sequence[str], by_value: bool) -> Iterator[None]:
    """The environment a forkserver started now gets (see `_forkserver`): it dies with this
    program when its main thread starts it, and it imports the program's main module and
    ``modules`` once."""
    if threading.current_thread() is threading.main_thread():
        os.environ[_forkserver.PARENT_ENV] = str(os.getpid())
    else:
        os.environ.pop(_forkserver.PARENT_ENV, None)
    main = _forkserver.main_spec(modules, by_value=by_value)
    if main is not None:
        os.environ[_forkserver.MAIN_ENV] = main
    try:
        yield
    finally:
        os.environ.pop(_forkserver.MAIN_ENV, None)


def _spawn_forkserver(modules: Sequence[str], by_value: bool) -> _launch.Spawned | None:
    """Spawn the forkserver before multiprocessing is imported (`_launch`), or None."""
    with _server_environment(modules, by_value):
        return _launch.spawn(PRELOAD)


def _start_forkserver(ctx: Any, modules: Sequence[str], by_value: bool) -> None:
    """Start the forkserver now, without waiting for its imports (multiprocessing's way). A
    server that cannot start (e.g. its socket path in a long $TMPDIR is too long) fails again,
    and is reported, when the first worker starts."""
    from multiprocessing import forkserver, resource_tracker

    tracker = getattr(resource_tracker, "_resource_tracker", None)
    tracker_started = getattr(tracker, "_pid", None) is not None
    ctx.set_forkserver_preload(list(PRELOAD))
    with _server_environment(modules, by_value), contextlib.suppress(OSError):
        if tracker_started:
            forkserver.ensure_running()
        else:
            with _tracker_after_server(forkserver):
                forkserver.ensure_running()
    if not tracker_started:
        _start_tracker()


def _start_tracker() -> None:
    """Start multiprocessing's resource tracker, which the forkserver just started needs once
    it forks workers, at a lower priority (`_yield_to_server`)."""
    from multiprocessing import resource_tracker

    with contextlib.suppress(Exception):
        resource_tracker.ensure_running()  # what `forkserver.ensure_running` starts first
    tracker = getattr(resource_tracker, "_resource_tracker", None)
    _yield_to_server(getattr(tracker, "_pid", None))


class _LaterTracker:
    """`multiprocessing.resource_tracker` as `forkserver.ensure_running` sees it while it
    starts the server: its ``ensure_running`` does nothing (it is called right after), the rest
    is the module's."""

    def __init__(self, module: Any) -> None:
        self._module = module

    def ensure_running(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


@contextlib.contextmanager
def _tracker_after_server(forkserver: Any) -> Iterator[None]:
    """Spawn the forkserver before multiprocessing's resource tracker, not after it: the
    server needs the tracker only when it forks a worker, and every millisecond before its
    spawn is one more before the first result (the tracker's spawn is a fork and exec of this
    program). Nothing else changes: the tracker starts as soon as the server is spawned."""
    module = forkserver.resource_tracker
    forkserver.resource_tracker = _LaterTracker(module)
    try:
        yield
    finally:
        forkserver.resource_tracker = module


#: The niceness given to the resource tracker that starting the forkserver starts (see below).
TRACKER_NICE = 10


def _yield_to_server(pid: int | None) -> None:
    """Let the forkserver boot before multiprocessing's resource tracker, spawned just after
    it (`_tracker_after_server`): a third interpreter whose imports (about 55 ms of CPU)
    compete with the server's on a machine of few cores (W6 on 2 cores: the first result
    60-100 ms sooner without that competition). Nothing waits for the tracker to be
    up: processes write to its pipe, and it removes what a killed program left when the
    program's last process is gone. Lowered once, for good (raising it back needs
    privileges); never a tracker this program started otherwise."""
    if pid is None:
        return
    with contextlib.suppress(Exception):
        os.setpriority(os.PRIO_PROCESS, pid, max(TRACKER_NICE, os.getpriority(os.PRIO_PROCESS, 0)))


def prestart(fn: Any = None) -> None:
    """Start the forkserver now without waiting for it, when it is the default start method:
    it imports what workers need while the program goes on building its pipeline, and the
    first worker waits that much less. From the main thread only (see `_forkserver`)."""
    if threading.current_thread() is not threading.main_thread():
        return
    with contextlib.suppress(Exception):  # a bad $HEADRACE_START_METHOD is reported at run
        if default_start_method() == "forkserver":
            module = getattr(fn, "__module__", None)
            modules = [module] if isinstance(module, str) else []
            _context("forkserver", modules, fn is not None and sent_by_value(fn))  # starts it


def sent_by_value(fn: Any) -> bool:
    """Whether cloudpickle sends ``fn`` by value (a function of the main script, a lambda, a
    local function, a callable object) rather than by reference to its module, as plain
    pickle would; the cheap test, erring towards by value."""
    return not held_by_name(fn)


# --- the main-script guard ---------------------------------------------------------------------


class MainStartsRun(BaseException):
    """Raised in the forkserver when the program's main module, as the server imports it,
    starts process workers (no main guard): the server gives that import up, and each worker
    then re-runs the script and reports the missing guard. A `BaseException`, so that the
    script's own ``except Exception`` does not swallow it."""


def main_script() -> str:
    """The program's main script, as a worker re-imports it (or a placeholder)."""
    main = sys.modules.get("__mp_main__") or sys.modules.get("__main__")
    return str(getattr(main, "__file__", None) or "the main script")


def exit_if_importing_main(method: str) -> None:
    """Called before starting process workers. In a worker process that is still importing the
    program's main script (multiprocessing calls that bootstrapping: spawn and forkserver
    workers re-run the script's top-level code), the script is starting a pipeline at import:
    say in one line what to do and exit with `NO_GUARD_EXIT`, which the supervisor in the
    parent recognises (instead of crashing in multiprocessing and being restarted in a loop)."""
    process = sys.modules.get("multiprocessing.process")  # loaded in a worker, always
    if process is None or not getattr(process.current_process(), "_inheriting", False):
        return
    if _forkserver.IMPORTING_MAIN:
        raise MainStartsRun  # the forkserver stops importing the script (see `_forkserver`)
    with contextlib.suppress(Exception):
        sys.stderr.write(
            f"headrace: this worker process (start method {method!r}) re-ran {main_script()} "
            f"while importing it, and the script starts a pipeline at import: {NO_GUARD_HINT}\n"
        )
        sys.stderr.flush()
    os._exit(NO_GUARD_EXIT)
