"""The inline backend: no pool.

A call stage (map, filter, flat_map, sink, route) runs fused into the thread that produces its
input, saving a channel hop; a stream stage (transform and the built-in n -> m stages) runs on
one driver thread of its own. Timeouts are checked when the call returns.
"""

from __future__ import annotations

from .._errors import format_traceback
from .._stages import STREAM_KINDS
from .._transport import Cancelled, Daemon, StopStage
from ._base import Backend, Caller, Chunk, StageWork, Workers, instantiate, run_stream


class InlineBackend(Backend):
    name = "inline"

    def start(self, work: StageWork) -> Workers:
        if work.kind in STREAM_KINDS:
            return DriverThread(work)
        return InlineCaller(work)


class InlineCaller(Workers):
    """Runs each pushed chunk at once in the pushing thread."""

    def __init__(self, work: StageWork) -> None:
        self._work = work
        self._caller: Caller | None = None
        try:
            self._caller = Caller(work, instantiate(work.fn))
            self._caller.retry_late = True
        except BaseException as exc:
            work.setup_failed(exc, format_traceback(exc))

    def push(self, chunk: Chunk) -> None:
        if self._caller is None:
            raise Cancelled  # its setup failed: the run is failing
        self._work.finish(self._caller.run(chunk))

    def join(self, timeout: float) -> bool:
        return True


class DriverThread(Workers):
    """One thread running a stream stage."""

    def __init__(self, work: StageWork) -> None:
        self._thread = Daemon(_drive, (work,), f"headrace-{work.name}")
        self._thread.start()

    def join(self, timeout: float) -> bool:
        return self._thread.wait_end(timeout)


def _drive(work: StageWork) -> None:
    try:
        run_stream(work)
    except (Cancelled, StopStage):
        pass  # the run is being cancelled, or nobody reads this stage any more
    finally:
        work.worker_exited()
