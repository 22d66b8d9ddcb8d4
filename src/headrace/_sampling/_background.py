"""Streamers run in a background process: what `ZMQStreamer` and `ProcessStreamer` share, and
`ProcessStreamer` itself.

Owns: `BackgroundStreamer`, the pass API of both (a pass is one run of the detached streamer in
a background process, bounded and cycled there); `produce`, what the background process runs
for a pass (an exit that is not an ``Exception`` becomes a `WorkerCrashedError`, the same for
both); `BackgroundProcess`, the supervisor of a background interpreter (start it, watch it
through its status pipe, surface its exception or its death, stop it: close, terminate, kill;
clean up its pipes) and `serve`, that interpreter's side of the pipes; and `ProcessStreamer`.

`ZMQStreamer` runs its pass in a `BackgroundProcess` (a fresh ``python -c`` interpreter, so no
``if __name__ == "__main__":`` guard is needed) and moves items over a socket (`_zmq`, `_wire`).
`ProcessStreamer` runs its pass as a ``transform`` stage with ``backend="process"``: the process
is a worker of headrace's process backend, whose supervisor starts, watches and stops it and
brings its exception back with its type; items come back through headrace's own transport
(arrays through shared memory). Builds on `_streamer`, `_streams` and `_errors`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

from .._backends._base import dumps_keeping_files
from .._errors import WorkerCrashedError, deliver, format_traceback
from .._streams import from_iterable
from ._streamer import Streamer, as_streamer, check_max_items

#: Seconds a background process gets to exit after a pass ends before it is terminated.
JOIN_TIMEOUT = 5.0
_LENGTH = struct.Struct("<Q")


class BackgroundStreamer(Streamer):
    """A Streamer whose passes run in a background process (the base of `ZMQStreamer` and
    `ProcessStreamer`): each pass runs the detached streamer there, ``max_items`` and
    ``cycle`` applied there too."""

    streamer: Streamer

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self.streamer!r}>"

    def _detached(self) -> Streamer:
        return self  # its streamer is detached when each pass starts

    def _open(self) -> Iterator[Any]:
        return self._run_pass(None, False)

    def iterate(self, max_items: int | None = None) -> Iterator[Any]:
        """A pass of at most ``max_items`` items, bounded in the background process too."""
        return self._run_pass(check_max_items(max_items), False)

    def cycle(self, max_items: int | None = None) -> Iterator[Any]:
        """The streamer cycled in the background process (one process for the whole cycle)."""
        return self._run_pass(check_max_items(max_items), True)

    def _run_pass(self, limit: int | None, cycle: bool) -> Iterator[Any]:
        raise NotImplementedError


def produce(streamer: Streamer, limit: int | None, cycle: bool, stage: str) -> Iterator[Any]:
    """What the background process runs for a pass: the streamer's items. A ``SystemExit`` or
    ``KeyboardInterrupt`` from the streamer is not the consumer's to receive: it becomes a
    `WorkerCrashedError` (with the original as its cause)."""
    count = 0
    try:
        for item in streamer.cycle(limit) if cycle else streamer.iterate(limit):
            yield item
            count += 1
    except (Exception, GeneratorExit):
        raise
    except BaseException as exc:
        raise WorkerCrashedError(
            f"the streamer raised {type(exc).__name__}({exc}) in the background process",
            stage=stage,
            index=count,
        ) from exc


def pickled(streamer: Streamer) -> bytes:
    """The streamer as bytes for a background process (functions sent by value keep their
    file names, for tracebacks); a clear TypeError if it cannot be sent."""
    try:
        return dumps_keeping_files(streamer)
    except Exception as exc:
        raise TypeError(
            f"the streamer cannot be sent to the background process: {exc!r:.300}; make "
            "its function and arguments picklable"
        ) from exc


# --- the supervisor of a background interpreter ---------------------------------------------


class BackgroundProcess:
    """A fresh interpreter that runs ``main(control_fd, status_fd)`` of module ``module``.

    The consumer writes the job on the control pipe and then holds the pipe open: the process
    exits when it closes (or when the consumer dies). The process writes its exception on the
    status pipe, pickled, if the pass fails; end of file there means it is gone. `stop` closes
    the control pipe, waits ``timeout`` seconds, then terminates and kills.
    """

    def __init__(self, module: str, main: str, stage: str, timeout: float) -> None:
        self.stage = stage
        self.timeout = timeout
        control_r, control_w = os.pipe()
        status_r, status_w = os.pipe()
        paths = [p for p in sys.path if isinstance(p, str)]
        code = (
            f"import sys; sys.path[:0] = {paths!r}; "
            f"from {module} import {main}; {main}({control_r}, {status_w})"
        )
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code],
                stdin=subprocess.DEVNULL,
                pass_fds=(control_r, status_w),
            )
        except BaseException:
            for fd in (control_r, control_w, status_r, status_w):
                os.close(fd)
            raise
        os.close(control_r)
        os.close(status_w)
        self.pid = self.proc.pid
        self.control: BinaryIO | None = os.fdopen(control_w, "wb")
        self.status = os.fdopen(status_r, "rb")

    def send_job(self, blob: bytes) -> None:
        assert self.control is not None
        with contextlib.suppress(OSError):  # it died at start: its status pipe says so
            _send_blob(self.control, blob)

    def read_status(self) -> bytes | None:
        """The process's pickled exception, or None: it is gone (end of the status pipe)."""
        return _read_blob(self.status)

    def failure(self, blob: bytes | None, index: int) -> BaseException:
        """The background process's exception, with its traceback as ``__cause__``."""
        import cloudpickle

        # These bytes come from our own child over an anonymous OS pipe, not from a socket.
        try:
            exc, tb_text = cloudpickle.loads(blob or b"")
        except Exception as why:
            return WorkerCrashedError(
                f"the {self.stage} background process failed at item {index} and its error "
                f"could not be read back: {why!r}",
                stage=self.stage,
                index=index,
            )
        return deliver(exc, stage=self.stage, index=index, tb_text=tb_text)

    def crashed(self, index: int) -> WorkerCrashedError:
        """The error for a process that died before the end of its stream."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(1.0)
        code = self.proc.returncode
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return WorkerCrashedError(
            f"the {self.stage} background process (pid {self.pid}) died ({how}) after {index} "
            "items, before the end of its stream",
            stage=self.stage,
            worker=f"pid {self.pid}",
            exitcode=code,
            index=index,
        )

    def stop(self) -> None:
        """Close the control pipe (the process exits), wait for it; terminate it, then kill
        it, if it does not; close the status pipe."""
        if self.control is not None:
            with contextlib.suppress(OSError):
                self.control.close()
            self.control = None
        proc = self.proc
        try:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(self.timeout)
                return
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1.0)
                return
            proc.kill()
            proc.wait()
        finally:
            self.status.close()


def serve(control_fd: int, status_fd: int) -> tuple[dict[str, Any], BinaryIO]:
    """The background interpreter's side: the job it was sent, and its status pipe (for
    `report`). It ignores Ctrl-C (the consumer's to handle) and exits as soon as the consumer
    closes the control pipe, or at once if that happens before the job arrives."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for fd in (control_fd, status_fd):
        os.set_inheritable(fd, False)  # processes the streamer starts must not hold them
    control = os.fdopen(control_fd, "rb")
    status = os.fdopen(status_fd, "wb")
    import cloudpickle

    blob = _read_blob(control)
    if blob is None:
        os._exit(0)  # the consumer went away before the pass began
    job: dict[str, Any] = cloudpickle.loads(blob)
    threading.Thread(target=_exit_when_told, args=(control,), daemon=True).start()
    return job, status


def report(status: BinaryIO, exc: BaseException) -> None:
    """Send the pass's exception (and its traceback text) to the consumer."""
    import cloudpickle

    tb_text = format_traceback(exc)
    try:
        blob = cloudpickle.dumps((exc, tb_text))
    except Exception:
        blob = cloudpickle.dumps((RuntimeError(f"{type(exc).__name__}: {exc}"), tb_text))
    _send_blob(status, blob)


def _exit_when_told(control: BinaryIO) -> None:
    """Exit the process as soon as the consumer closes the control pipe (or dies)."""
    with contextlib.suppress(OSError):
        while control.read(4096):
            pass
    os._exit(0)


def _send_blob(pipe: BinaryIO, blob: bytes) -> None:
    pipe.write(_LENGTH.pack(len(blob)))
    pipe.write(blob)
    pipe.flush()


def _read_blob(pipe: BinaryIO) -> bytes | None:
    """One length-prefixed message, or None at the end of the pipe."""
    head = pipe.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack(head)
    blob = pipe.read(size)
    return blob if len(blob) == size else None


# --- ProcessStreamer ------------------------------------------------------------------------


class _Drain:
    """The stage's function: one pass of the streamer per input (there is one input)."""

    def __init__(self, streamer: Streamer, limit: int | None, cycle: bool, stage: str) -> None:
        self.streamer, self.limit, self.cycle, self.stage = streamer, limit, cycle, stage

    def __call__(self, inputs: Iterable[Any]) -> Iterator[Any]:
        for _ in inputs:
            yield from produce(self.streamer, self.limit, self.cycle, self.stage)


class ProcessStreamer(BackgroundStreamer):
    """Run a Streamer in a background process of headrace's process backend.

    The streamer (sent with cloudpickle) runs in one worker process; its items come back
    through headrace's process transport (arrays through shared memory, small items batched),
    so producing overlaps with consuming. Errors keep their type; a dead process is a
    `WorkerCrashedError`. As with any process stage under forkserver or spawn, a script that
    uses it needs an ``if __name__ == "__main__":`` guard (`ZMQStreamer` does not).

    Parameters
    ----------
    streamer : Streamer or iterable
        What to run in the background.
    name : str
        The stage's name in reports and errors.
    **run_options
        Passed to each run, e.g. ``start_method``.

    Examples
    --------
    >>> import headrace as hr
    >>> p = hr.ProcessStreamer(hr.Streamer(range, 5))  # doctest: +SKIP
    >>> list(p), list(p(max_items=2))  # doctest: +SKIP
    ([0, 1, 2, 3, 4], [0, 1])
    """

    def __init__(self, streamer: Any, *, name: str = "ProcessStreamer", **run_options: Any):
        self.streamer = as_streamer(streamer)
        self.name = name
        self.run_options = run_options

    def _run_pass(self, limit: int | None, cycle: bool) -> Iterator[Any]:
        drain = _Drain(self.streamer._detached(), limit, cycle, self.name)
        stream = from_iterable([None], name=f"{self.name}-start").transform(
            drain, backend="process", name=self.name
        )
        with stream.open(**self.run_options) as run:
            yield from run
