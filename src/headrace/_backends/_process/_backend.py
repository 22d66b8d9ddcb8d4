"""`ProcessBackend`: what the runner asks of the process backend (see the package's docstring)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._base import Backend, StageWork, Workers
from ._protocol import BATCH_S, DEPTH, WINDOW_BYTES

if TYPE_CHECKING:
    from ..._stages import StageOptions


class ProcessBackend(Backend):
    name = "process"
    runs_tail = True

    def start(self, work: StageWork) -> Workers:
        from ._supervisor import ProcessWorkers

        return ProcessWorkers(work)

    chunk_s = BATCH_S

    def window(self, options: StageOptions) -> tuple[int, int | None]:
        if options.timeout is not None:
            return 2 * options.workers, WINDOW_BYTES
        return (DEPTH + 1) * options.workers, WINDOW_BYTES
