"""Stage kinds, stage options and the bodies of the built-in stages.

Owns: `StageOptions` (validated when a stage is built), the set of stage kinds, and the
iterator functions behind `batch`, `rebatch`, `unbatch` and `take`, with the "auto" collate.
Inert: nothing here starts a thread. Imports only `_errors` and `_types`.
"""

from __future__ import annotations

import math
import numbers
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from ._types import BACKENDS, ON_ERROR, Collated, loaded_numpy

#: Stages that call the user's function once per item; they can run fused into their producer.
CALL_KINDS = frozenset({"map", "filter", "flat_map", "sink", "route"})
#: Stages whose function consumes an iterator of inputs and yields outputs (n -> m).
STREAM_KINDS = frozenset(
    {"transform", "batch", "rebatch", "unbatch", "take", "prefetch", "merge", "zip"}
)
#: Stages whose outputs keep the index of their input (1 -> 1 or 1 -> 0/1).
KEY_KEEPING = frozenset({"map", "filter", "sink", "route", "take", "prefetch", "zip"})
#: Stages that are strictly 1 -> 1 (a zip may sit behind a chain of them).
ONE_TO_ONE = frozenset({"map", "prefetch"})


#: Default output-channel capacity in items. Below ~64, cheap items pay a thread switch per
#: item (measured: a bare source hop runs at 46k items/s with 2 slots, 410k with 64).
AUTO_ITEMS = 64
#: With the default capacity, array data queued in one channel is also held under this many
#: bytes (never fewer than two items), so large arrays do not fill 64 slots. 16 MiB keeps two
#: 8 MiB images per hop: the process tree of a 2-worker image pipeline then stays near 130 MB
#: of physical memory (measured with benchmarks W2a/W2b), and a consumer still never waits.
AUTO_BYTES = 16 * 2**20


#: Most workers one stage may have. Each is a thread or a process with its own stack (and, for
#: processes, its own interpreter: tens of MB); past a thousand, a machine spends more on
#: switching and memory than the work gains. Asking for more is refused.
MAX_WORKERS = 1024
#: Process workers per core above which a stage warns: CPU-bound processes beyond the cores
#: only take turns, and each one costs an interpreter's memory.
PROCESSES_PER_CORE = 4


def min_items(workers: int) -> int:
    """Items a channel always accepts: two per worker keep every worker fed across a hand-off
    (the rule behind torch's prefetch_factor=2)."""
    return max(2, 2 * workers)


#: The keyword options of every stage, in the order the documentation lists them.
STAGE_OPTIONS = (
    "workers",
    "backend",
    "ordered",
    "maxsize",
    "on_error",
    "retries",
    "timeout",
    "name",
)


class StageOptions:
    """The options every stage takes, validated when the stage is built; read-only.

    A plain class rather than a frozen dataclass: process workers import this module, and
    the dataclasses module's imports are a good part of a worker's start-up.
    """

    __slots__ = STAGE_OPTIONS
    workers: int
    backend: str
    ordered: bool
    maxsize: int | None
    on_error: str
    retries: int
    timeout: float | None
    name: str | None

    def __init__(
        self,
        *,
        workers: int = 1,
        backend: str = "thread",
        ordered: bool = True,
        maxsize: int | None = None,
        on_error: str = "raise",
        retries: int = 0,
        timeout: float | None = None,
        name: str | None = None,
    ) -> None:
        self.__setstate__((workers, backend, ordered, maxsize, on_error, retries, timeout, name))
        self._check()

    def __getstate__(self) -> tuple[Any, ...]:
        return tuple(getattr(self, option) for option in STAGE_OPTIONS)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        for option, value in zip(STAGE_OPTIONS, state, strict=True):
            object.__setattr__(self, option, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"stage options are read-only: cannot set {name!r}")

    def __eq__(self, other: object) -> bool:
        if type(other) is not StageOptions:
            return NotImplemented
        return self.__getstate__() == other.__getstate__()

    def __hash__(self) -> int:
        return hash(self.__getstate__())

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{o}={v!r}" for o, v in zip(STAGE_OPTIONS, self.__getstate__(), strict=True)
        )
        return f"StageOptions({shown})"

    def _check(self) -> None:
        _check_int("workers", self.workers, minimum=1)
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        _check_worker_count(self.workers, self.backend)
        if self.backend == "inline" and self.workers != 1:
            raise ValueError(
                f"workers must be 1 with backend='inline' (got {self.workers}): an inline stage"
                " runs in the thread that feeds it; use backend='thread' for a pool"
            )
        if not isinstance(self.ordered, bool):
            raise TypeError(f"ordered must be True or False, got {self.ordered!r}")
        if self.maxsize is not None:
            _check_int("maxsize", self.maxsize, minimum=1)
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {self.on_error!r}")
        _check_int("retries", self.retries, minimum=0)
        if self.timeout is not None:
            if isinstance(self.timeout, bool) or not isinstance(self.timeout, int | float):
                raise TypeError(f"timeout must be a number of seconds, got {self.timeout!r}")
            if not (self.timeout > 0 and math.isfinite(self.timeout)):
                raise ValueError(
                    f"timeout must be a positive number of seconds, got {self.timeout}"
                )
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise TypeError(f"name must be a non-empty string, got {self.name!r}")

    @property
    def capacity(self) -> int:
        """Output-channel capacity in items."""
        return (
            self.maxsize if self.maxsize is not None else max(AUTO_ITEMS, min_items(self.workers))
        )

    @property
    def byte_bound(self) -> int | None:
        """Bytes of array data the output channel holds at most (None: items only)."""
        return None if self.maxsize is not None else AUTO_BYTES


def check_options(where: str, given: Iterable[str], known: Iterable[str], what: str) -> None:
    """Raise TypeError for an option ``where`` does not take, suggesting the closest one.

    Examples
    --------
    >>> check_options("map", ["worker"], ["workers", "backend"], "stage option")
    Traceback (most recent call last):
    ...
    TypeError: map() got an unknown stage option 'worker'; did you mean 'workers'? ...
    """
    names = list(known)
    for name in given:
        if name in names:
            continue
        import difflib  # here: only a misspelt option needs it (workers import this module)

        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise TypeError(
            f"{where}() got an unknown {what} {name!r}; {hint}the {what}s are: {', '.join(names)}"
        )


def stage_options(where: str, options: Mapping[str, Any]) -> StageOptions:
    """`StageOptions` from the keywords a stage method got, naming that method on a typo."""
    check_options(where, options, STAGE_OPTIONS, "stage option")
    return StageOptions(**options)


def user_stacklevel() -> int:
    """The ``stacklevel`` of a warning raised by the caller that points at the user's code:
    the first frame outside headrace (and outside generated code such as a dataclass's
    ``__init__``)."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(2), 2
    while frame.f_back is not None and (
        frame.f_code.co_filename.startswith(package) or frame.f_code.co_filename.startswith("<")
    ):
        frame, level = frame.f_back, level + 1
    return level


def _check_worker_count(workers: int, backend: str) -> None:
    if workers > MAX_WORKERS:
        raise ValueError(
            f"workers={workers} is more than one stage may have ({MAX_WORKERS}): every worker is "
            "a thread or a process of its own. For I/O-bound calls a few dozen threads are "
            "usually enough; for CPU-bound ones use about os.cpu_count() process workers"
        )
    cores = os.cpu_count() or 1
    if backend == "process" and workers > PROCESSES_PER_CORE * cores:
        warnings.warn(
            f"headrace: workers={workers} processes on {cores} cores: processes beyond the "
            "cores take turns and each holds its own interpreter's memory. Use about "
            "os.cpu_count() workers, or backend='thread' for I/O-bound calls",
            RuntimeWarning,
            stacklevel=user_stacklevel(),
        )


def _check_int(arg: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{arg} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{arg} must be >= {minimum}, got {value}")


def check_callable(fn: object, arg: str = "fn") -> None:
    if not callable(fn):
        raise TypeError(f"{arg} must be callable, got {type(fn).__name__} {fn!r:.80}")


def check_count(arg: str, value: object, *, minimum: int = 1) -> int:
    _check_int(arg, value, minimum=minimum)
    return int(value)  # type: ignore[call-overload, no-any-return]


def callable_name(fn: object, default: str) -> str:
    name = getattr(fn, "__name__", None)
    if not isinstance(name, str) or name.startswith("<"):
        return default
    return name


# --- collate -------------------------------------------------------------------------------


#: Makes an uninitialised array of a shape and dtype for `collate_auto` to fill, or None.
Empty = Callable[[tuple[int, ...], Any], Any]


def collate_auto(items: list[Any], empty: Empty | None = None) -> Any:
    """Stack arrays (and dicts / tuples of arrays) along a new axis 0; lists for the rest.

    ``empty(shape, dtype)``, when given, makes the array a stack of equal arrays is written
    into (a process worker's shared-memory slot, so the batch crosses without another copy);
    where it returns None, `numpy.stack` makes one.

    Examples
    --------
    >>> import numpy as np
    >>> collate_auto([np.zeros(2), np.ones(2)]).shape
    (2, 2)
    >>> collate_auto([{"x": np.zeros(3)}, {"x": np.ones(3)}])["x"].shape
    (2, 3)
    >>> collate_auto([1, 2, 3])
    [1, 2, 3]
    """
    first = items[0]
    np = loaded_numpy()
    if np is not None and isinstance(first, np.ndarray | np.generic):
        if empty is not None and type(first) is np.ndarray and not first.dtype.hasobject:
            shape, dtype = first.shape, first.dtype
            if all(type(a) is np.ndarray and a.shape == shape and a.dtype == dtype for a in items):
                out = empty((len(items), *shape), dtype)
                if out is not None:
                    return np.stack(items, out=out)
        try:
            return np.stack(items)
        except ValueError:
            shapes = {np.shape(a) for a in items}  # only on failure: not on every batch
            if len(shapes) < 2:
                raise
            one, other = sorted(shapes, key=str)[:2]
        raise ValueError(
            f"batch(collate='auto') cannot stack arrays of shapes {one} and {other}: give "
            "them one shape before the batch (pad or crop them in a map), or pass "
            "collate=None (lists) or a collate function"
        )
    if isinstance(first, Mapping):
        return {k: collate_auto([item[k] for item in items], empty) for k in first}
    if isinstance(first, tuple) and not hasattr(first, "_fields"):
        return tuple(collate_auto(list(parts), empty) for parts in zip(*items, strict=True))
    return list(items)


def uncollate(batch: Any, n: int) -> list[Any]:
    """The ``n`` items of a batch `collate_auto` (or ``list``) made, as items that collate to
    the same batch again (rows of a stacked array are views of it).

    Examples
    --------
    >>> import numpy as np
    >>> items = [{"x": np.arange(2) + i, "y": i} for i in range(3)]
    >>> again = collate_auto(uncollate(collate_auto(items), 3))
    >>> again["x"].tolist(), again["y"]
    ([[0, 1], [1, 2], [2, 3]], [0, 1, 2])
    """
    if isinstance(batch, list):
        return batch
    if isinstance(batch, dict):
        columns = {k: uncollate(v, n) for k, v in batch.items()}
        return [{k: column[i] for k, column in columns.items()} for i in range(n)]
    if isinstance(batch, tuple):
        parts = [uncollate(part, n) for part in batch]
        return [tuple(part[i] for part in parts) for i in range(n)]
    return list(batch)  # a stacked array: its rows


#: The body of a built-in stream stage: an iterator of inputs to an iterator of outputs.
Body = Callable[[Iterator[Any]], Iterator[Any]]


def batch_body(size: int, drop_last: bool, collate: Any) -> Body:
    gather: Callable[[list[Any]], Any]
    if collate == "auto":
        gather = collate_auto
    elif collate is None:
        gather = list
    else:
        gather = collate

    def batch(items: Iterator[Any]) -> Iterator[Any]:
        group: list[Any] = []
        for item in items:
            if type(item) is Collated:  # made in a process worker (see `Tail`)
                if not group:
                    yield item.value
                    continue
                # Items were lost before it (a filter, a skipped error): the batches shifted.
                for part in uncollate(item.value, item.n):
                    group.append(part)
                    if len(group) == size:
                        yield gather(group)
                        group = []
                continue
            group.append(item)
            if len(group) == size:
                yield gather(group)
                group = []
        if group and not drop_last:
            yield gather(group)

    return batch


def _rows(batch: Any) -> int:
    if type(batch) is dict and batch:  # the common case, without building a set
        values = iter(batch.values())
        n = len(next(values))
        if all(len(v) == n for v in values):
            return n
    if isinstance(batch, Mapping):
        counts = {len(v) for v in batch.values()}
        if len(counts) != 1:
            raise ValueError(
                f"rebatch needs equal row counts in a dict batch, got {sorted(counts)}"
            )
        return counts.pop()
    return len(batch)


def _slice(batch: Any, start: int, stop: int) -> Any:
    if isinstance(batch, Mapping):
        return {k: v[start:stop] for k, v in batch.items()}
    return batch[start:stop]


def _concat(parts: list[Any]) -> Any:
    if len(parts) == 1:
        return parts[0]
    import numpy as np  # rebatch works on arrays (and concatenates lists through them)

    if isinstance(parts[0], Mapping):
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return np.concatenate(parts)


def rebatch_body(rows: int, drop_last: bool) -> Body:
    """Batches of exactly ``rows`` rows. An input that fits whole in the batch being built is
    kept whole, not sliced (one-row items: 0.5 us each instead of 2.3 us)."""

    def rebatch(batches: Iterator[Any]) -> Iterator[Any]:
        parts: list[Any] = []
        held = 0
        for batch in batches:
            start, n = 0, _rows(batch)
            if 0 < n <= rows - held:
                parts.append(batch)
                held += n
                if held == rows:
                    yield _concat(parts)
                    parts, held = [], 0
                continue
            while start < n:
                take = min(rows - held, n - start)
                parts.append(_slice(batch, start, start + take))
                held += take
                start += take
                if held == rows:
                    yield _concat(parts)
                    parts, held = [], 0
        if parts and not drop_last:
            yield _concat(parts)

    return rebatch


def _split(batch: Any) -> Iterable[Any]:
    if isinstance(batch, Mapping):
        keys = list(batch)
        return (dict(zip(keys, row, strict=True)) for row in zip(*batch.values(), strict=True))
    if isinstance(batch, tuple) and not hasattr(batch, "_fields"):
        return zip(*batch, strict=True)
    return iter(batch)  # type: ignore[no-any-return]


def unbatch_body(batches: Iterator[Any]) -> Iterator[Any]:
    for batch in batches:
        yield from _split(batch)


def take_body(n: int) -> Body:
    def take(items: Iterator[Any]) -> Iterator[Any]:
        if n == 0:
            return
        for count, item in enumerate(items, 1):
            yield item
            if count == n:
                return

    return take


def identity_body(items: Iterator[Any]) -> Iterator[Any]:
    yield from items
