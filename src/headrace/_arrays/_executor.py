"""How a job's tasks run: the seam between `ArrayJob` and an engine.

Owns: `Executor` (what a job needs from an engine: whether arrays can be handed over as they
are, and ``run(worker, tasks, name) -> results in task order``) and `LocalExecutor`, which runs
the tasks as one headrace stage (``hr.from_iterable(tasks).map(worker, ...)``), so that crash
detection, error delivery, Ctrl-C and clean-up of workers are the core's. A Ray executor (arrays
in Ray's object store, tasks on actors) plugs in here: `executor_for` is the only place that
chooses. Imports the core's public stream API.
"""

from __future__ import annotations

from typing import Any, Protocol

from .._errors import WorkerCrashedError
from .._streams import from_iterable
from ._worker import TaskWorker, task_note

BACKENDS = ("inline", "thread", "process")


class Executor(Protocol):
    #: True: workers share this process's memory, arrays are handed over as they are.
    local: bool

    def run(self, worker: type[TaskWorker], tasks: list[Any], name: str) -> list[Any]: ...


class LocalExecutor:
    """Runs tasks on this machine's inline, thread or process workers."""

    def __init__(self, backend: str, workers: int, start_method: str | None) -> None:
        self.backend = backend
        self.workers = 1 if backend == "inline" else workers
        self.start_method = start_method
        self.local = backend != "process"

    def run(self, worker: type[TaskWorker], tasks: list[Any], name: str) -> list[Any]:
        if not tasks:
            return []
        stream = from_iterable(tasks, name=f"{name} tasks").map(
            worker, workers=min(self.workers, len(tasks)), backend=self.backend, name=name
        )
        options: dict[str, Any] = {}
        if self.start_method is not None:
            options["start_method"] = self.start_method
        try:
            return stream.collect(**options)
        except WorkerCrashedError as exc:
            if exc.index is not None and 0 <= exc.index < len(tasks):
                exc.add_note(task_note(tasks[exc.index]))
            raise


def executor_for(
    backend: str, workers: int, start_method: str | None, engine: Any = None
) -> Executor:
    """The executor of a job: the local engine now; a Ray executor when ``engine`` is one."""
    if engine is not None:
        raise ValueError(
            f"engine={engine!r}: ArrayJob runs on the local engine only in this version "
            "(engine=None); hr.RayEngine runs pipelines (Stream runs), not ArrayJob yet"
        )
    return LocalExecutor(backend, workers, start_method)
