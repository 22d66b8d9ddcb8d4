"""The callable a job hands to the stage: maps the job's arrays once per worker, calls the task.

Owns: `TaskWorker` (a class, so headrace instantiates it once per worker: the arrays are mapped
in ``__init__``, the user's class, if ``fn`` is one, is instantiated there too) and
`worker_class` (a subclass carrying one call's function and placements). Imports the core's
`_errors` and this package's storage.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np

from .._errors import shorten
from ._namespace import Arrays
from ._storage import Placement, open_view


def _user_callable(fn: Any) -> Callable[[Any, Arrays], Any]:
    if isinstance(fn, type):
        return fn()  # type: ignore[no-any-return]
    return fn  # type: ignore[no-any-return]


def task_note(task: Any) -> str:
    return f"headrace: in ArrayJob task {shorten(repr(task), 200)}"


class TaskWorker:
    """One worker's state: the arrays (mapped once) and the task function."""

    fn: ClassVar[Any]
    placements: ClassVar[tuple[Placement, ...]]
    aliases: ClassVar[Mapping[str, str]]  # "input" / "output" -> an array's name (stack)

    def __init__(self) -> None:
        views: dict[str, np.ndarray[Any, Any]] = {p.name: open_view(p) for p in self.placements}
        for alias, target in self.aliases.items():
            view = views[target].view()
            if alias == "input":
                view.flags.writeable = False
            views[alias] = view
        self.arrays = Arrays(views)
        self.call = _user_callable(self.fn)

    def __call__(self, task: Any) -> Any:
        try:
            return self.call(task, self.arrays)
        except Exception as exc:
            exc.add_note(task_note(task))
            raise


def worker_class(
    fn: Any, placements: tuple[Placement, ...], aliases: Mapping[str, str]
) -> type[TaskWorker]:
    """A `TaskWorker` subclass for one call (a new class: cloudpickle sends it by value)."""
    name = getattr(fn, "__name__", type(fn).__name__)
    attrs = {"fn": staticmethod(fn), "placements": placements, "aliases": dict(aliases)}
    cls = type(name, (TaskWorker,), attrs)
    # A qualified name no module defines, so that cloudpickle sends the class by value.
    cls.__qualname__ = f"ArrayTask[{name}]"
    return cls
