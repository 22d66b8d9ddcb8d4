"""Small types and helpers shared by every layer, process workers among them.

Owns: the literal types of the stage options, `Collated`, `weight`, `loaded_numpy`,
`held_by_name`. Imports
nothing from headrace, and nothing a worker does not need (the records a run reports are in
`_records`: dataclasses, whose imports are a good part of a worker's start-up).
"""

from __future__ import annotations

import sys
from typing import Any, Literal

BackendName = Literal["inline", "thread", "process"]
OnError = Literal["raise", "skip"]

BACKENDS: tuple[str, ...] = ("inline", "thread", "process")
ON_ERROR: tuple[str, ...] = ("raise", "skip")


class Collated:
    """A batch made where its items were made: a process worker runs the ``batch`` stage that
    follows its stage (see `_backends._base.Tail`) on ``n`` consecutive outputs, and only that
    batch stage ever sees one (see `_stages.batch_body`). ``nbytes``: its array bytes."""

    __slots__ = ("n", "nbytes", "value")

    def __init__(self, value: Any, n: int, nbytes: int) -> None:
        self.value = value
        self.n = n
        self.nbytes = nbytes

    def __reduce__(self) -> tuple[Any, ...]:
        return (Collated, (self.value, self.n, self.nbytes))


def weight(values: list[Any]) -> int:
    """Items in a chunk where a `Collated` stands for its ``n``."""
    return sum(v.n if type(v) is Collated else 1 for v in values)


def loaded_numpy() -> Any:
    """NumPy if this program has imported it, else None: no array can exist without it, so the
    core never imports NumPy itself (a worker of a pipeline without arrays starts faster)."""
    return sys.modules.get("numpy")


def held_by_name(obj: Any) -> bool:
    """Whether ``obj``'s module, loaded and not the main script, holds it under its qualified
    name: pickle, and cloudpickle unless the module is registered to go by value, send it by
    reference to that name (a worker imports the module to find it)."""
    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    if module is None or module.__name__ == "__main__":
        return False
    found: Any = module
    for part in str(getattr(obj, "__qualname__", "")).split("."):
        found = getattr(found, part, None)
    return found is obj
