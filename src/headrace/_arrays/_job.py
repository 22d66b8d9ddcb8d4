"""`ArrayJob`: many tasks over the same large arrays, sharing them instead of copying them.

Owns: the job's life cycle (share inputs on entry, allocate outputs, run `map` and `stack`,
remove every segment and file on exit, whatever the exit) and the checks of its arguments.
Where the arrays live is `_storage`'s business; how tasks run is `_executor`'s.
"""

from __future__ import annotations

import keyword
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from .. import _shm, _tempdirs
from .._backends._process import START_METHODS
from .._errors import ClosedError
from ._executor import BACKENDS, Executor, executor_for
from ._namespace import Arrays
from ._storage import STORAGES, Placement, Storage, Store, open_view, sweep_stale_folders
from ._worker import worker_class

#: Names a task sees during `ArrayJob.stack` for the layer's input and output.
RESERVED = frozenset({"input", "output"})


def _check_name(name: Any, taken: Iterable[str]) -> str:
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(f"an array name must be a Python identifier, got {name!r}")
    if name.startswith("_") or name in RESERVED:
        raise ValueError(
            f"array name {name!r} is reserved (names starting with '_', 'input', 'output'); "
            "choose another"
        )
    if name in taken:
        raise ValueError(f"this job already has an array named {name!r}")
    return name


def _check_input(name: str, value: Any) -> np.ndarray[Any, Any]:
    if not isinstance(value, np.ndarray):
        raise TypeError(
            f"ArrayJob input {name!r} must be a NumPy array, got {type(value).__name__}; "
            f"convert it first (np.asarray(...))"
        )
    if value.dtype.hasobject:
        raise TypeError(
            f"ArrayJob input {name!r} has dtype {value.dtype}, which holds Python objects and "
            "cannot be shared between processes; use a numeric, boolean or fixed-size dtype"
        )
    return value


def _parent_view(p: Placement) -> np.ndarray[Any, Any]:
    if p.array is None:  # an input file memmap, mapped where it is
        return open_view(p)
    view = p.array.view()
    if not p.writable:
        view.flags.writeable = False
    return view


class ArrayJob:
    """Run many tasks over the same large arrays, in parallel, without copying them.

    The input arrays are shared once per job: every worker maps them read-only, with no copy
    (on the process backend they live in shared memory, or for arrays larger than ``/dev/shm``
    allows in a file in a private temporary folder). Outputs made with `output` are
    preallocated shared arrays that tasks fill in place; the parent reads them without a copy.
    When the ``with`` block ends, also on an error, Ctrl-C or a killed worker, every segment
    and temporary file of the job is removed; arrays the parent still holds stay valid.

    Parameters
    ----------
    inputs : mapping of str to numpy.ndarray, optional
        Input arrays by name (positional only); or give them as keywords (``X=X``).
    workers : int, default 1
        Tasks that run at the same time.
    backend : {"thread", "process", "inline"}, default "thread"
        Where tasks run: threads of this process, worker processes, or this thread.
    storage : {"auto", "shm", "file"}, default "auto"
        Where the process backend puts arrays: ``/dev/shm`` when the array takes at most half
        of its free space, else a file; or always one of them.
    start_method : str, optional
        Start method of worker processes (default: headrace's, forkserver on Linux).
    engine : None
        The engine; only the local one (None) exists in this version.
    **arrays : numpy.ndarray
        Input arrays by name.

    Examples
    --------
    >>> import numpy as np, headrace as hr
    >>> def column_sums(task, arrays):
    ...     lo, hi = task
    ...     arrays.S[lo:hi] = arrays.X[:, lo:hi].sum(axis=0)
    ...     return hi - lo
    >>> X = np.arange(12.0).reshape(3, 4)
    >>> with hr.ArrayJob(X=X, workers=2) as job:
    ...     S = job.output("S", shape=(4,), dtype="f8")
    ...     job.map(column_sums, [(0, 2), (2, 4)])
    [2, 2]
    >>> S.tolist()
    [12.0, 15.0, 18.0, 21.0]
    """

    def __init__(
        self,
        inputs: Mapping[str, np.ndarray[Any, Any]] | None = None,
        /,
        *,
        workers: int = 1,
        backend: str = "thread",
        storage: Storage = "auto",
        start_method: str | None = None,
        engine: Any = None,
        **arrays: np.ndarray[Any, Any],
    ) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int):
            raise TypeError(f"workers must be an int, got {type(workers).__name__}")
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
        if start_method is not None and start_method not in START_METHODS:
            raise ValueError(f"start_method must be one of {START_METHODS}, got {start_method!r}")
        if inputs is not None and not isinstance(inputs, Mapping):
            raise TypeError(
                f"inputs must be a mapping of names to arrays, got {type(inputs).__name__}"
            )
        given: dict[str, np.ndarray[Any, Any]] = {}
        for source in (inputs or {}, arrays):
            for name, value in source.items():
                given[_check_name(name, given)] = _check_input(name, value)
        self._inputs = given
        self._executor: Executor = executor_for(backend, workers, start_method, engine)
        self._storage: Storage = storage
        self._placements: dict[str, Placement] = {}
        self._views: dict[str, np.ndarray[Any, Any]] = {}
        self._store: Store | None = None
        self._state = "new"  # new -> open -> closed
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self.workers = workers
        self.backend = backend
        #: The tasks' return values of each layer of the latest `stack`, in task order.
        self.layer_results: list[list[Any]] = []

    def __repr__(self) -> str:
        names = ", ".join(self._inputs) or "no inputs"
        return f"<ArrayJob {names} ({self.backend} x {self.workers}, {self._state})>"

    # --- life cycle ---------------------------------------------------------------------

    def __enter__(self) -> ArrayJob:
        if self._state != "new":
            raise ClosedError("an ArrayJob can be entered once; make a new one")
        # What a killed job of an earlier program left behind (its owner is dead).
        _shm.sweep_stale()
        sweep_stale_folders()
        _tempdirs.sweep_stale()  # its multiprocessing folder (headrace-<pid>-mp-*) among them
        store = Store(local=self._executor.local, storage=self._storage)
        self._store = store
        self._finalizer = weakref.finalize(self, store.close)
        self._state = "open"
        try:
            for name, array in self._inputs.items():
                self._add(store.share_input(name, array))
        except BaseException:
            self.close()
            raise
        self._inputs = {}  # the job does not keep the caller's arrays alive
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove every shared segment and temporary file of the job (idempotent)."""
        self._state = "closed"
        self._placements = {}
        self._views = {}
        if self._finalizer is not None:
            self._finalizer()

    def _check_open(self, what: str) -> Store:
        if self._state == "new":
            raise ClosedError(
                f"ArrayJob.{what}: use the job inside `with hr.ArrayJob(...) as job:`"
            )
        if self._state == "closed" or self._store is None:
            raise ClosedError(
                f"ArrayJob.{what}: the job is closed (its `with` block ended) and its shared "
                "arrays are gone; run the work inside the block, or start a new job"
            )
        return self._store

    def _add(self, placement: Placement) -> np.ndarray[Any, Any]:
        self._placements[placement.name] = placement
        view = _parent_view(placement)
        self._views[placement.name] = view
        return view

    # --- arrays -------------------------------------------------------------------------

    @property
    def arrays(self) -> Arrays:
        """The job's arrays in this process: inputs read-only, outputs writable."""
        self._check_open("arrays")
        return Arrays(self._views)

    def output(
        self, name: str, shape: int | Sequence[int], dtype: Any = "f8"
    ) -> np.ndarray[Any, Any]:
        """A new output array, zero-filled, shared with the workers, which write into it.

        Parameters
        ----------
        name : str
            How tasks reach it: ``arrays.<name>``.
        shape : int or tuple of int
        dtype : numpy dtype, default ``"f8"``

        Returns
        -------
        numpy.ndarray
            The parent's view of the array: it sees what the workers wrote, without a copy,
            and stays valid after the job ends.

        Examples
        --------
        >>> import numpy as np, headrace as hr
        >>> with hr.ArrayJob(X=np.ones(3)) as job:
        ...     P = job.output("P", shape=(3, 2))
        >>> P.shape, P.dtype.name, float(P.sum())
        ((3, 2), 'float64', 0.0)
        """
        store = self._check_open("output")
        _check_name(name, self._placements)
        dims = (shape,) if isinstance(shape, int) else tuple(shape)
        if not all(isinstance(d, int | np.integer) and not isinstance(d, bool) for d in dims):
            raise TypeError(f"shape must be an int or a tuple of ints, got {shape!r}")
        if any(d < 0 for d in dims):
            raise ValueError(f"shape must not be negative, got {shape!r}")
        kind = np.dtype(dtype)
        if kind.hasobject:
            raise TypeError(f"output {name!r}: dtype {kind} holds Python objects; cannot share it")
        return self._add(store.new_output(name, tuple(int(d) for d in dims), kind))

    # --- running ------------------------------------------------------------------------

    def map(self, fn: Any, tasks: Iterable[Any], *, name: str | None = None) -> list[Any]:
        """Run ``fn(task, arrays)`` for every task, in parallel; return the results in task order.

        ``fn`` reads the inputs (``arrays.X``) and writes its part of an output
        (``arrays.P[rows] = ...``); it returns a small value (a score, a fitted model).
        A class is instantiated once per worker and its instance called. An exception in a
        task reaches the caller with its own type, the worker's traceback as ``__cause__``
        and a note naming the task.

        Examples
        --------
        >>> import numpy as np, headrace as hr
        >>> with hr.ArrayJob(X=np.arange(6.0)) as job:
        ...     job.map(lambda i, arrays: float(arrays.X[i]), [5, 0])
        [5.0, 0.0]
        """
        self._check_open("map")
        return self._run(fn, tasks, {}, name)

    def stack(self, layers: Iterable[Any], *, input: str | None = None) -> np.ndarray[Any, Any]:
        """Run layers in order, the tasks of a layer in parallel; each layer's output is the
        next layer's input. Return the last layer's output.

        A layer is a tuple ``(fn, tasks, output)``: ``output`` is an array made with `output`
        (or its name). A task of the layer sees ``arrays.input`` (the previous layer's output,
        read-only; for the first layer the array named ``input``, default: the job's first
        input) and ``arrays.output`` (its layer's output), beside every array by name. The
        tasks' return values of each layer are in `layer_results`.

        Examples
        --------
        >>> import numpy as np, headrace as hr
        >>> def double(i, arrays):
        ...     arrays.output[i] = 2 * arrays.input[i]
        >>> with hr.ArrayJob(X=np.arange(3.0)) as job:
        ...     A, B = job.output("A", 3), job.output("B", 3)
        ...     Z = job.stack([(double, range(3), A), (double, range(3), "B")])
        >>> Z.tolist()
        [0.0, 4.0, 8.0]
        """
        self._check_open("stack")
        plan = [self._layer(k, layer) for k, layer in enumerate(layers)]
        if not plan:
            raise ValueError("stack() needs at least one layer")
        previous = input if input is not None else next(iter(self._placements), None)
        if previous is not None and previous not in self._placements:
            raise ValueError(f"input={previous!r} is not an array of this job")
        self.layer_results = []
        for k, (fn, tasks, out) in enumerate(plan):
            aliases = {"output": out} if previous is None else {"input": previous, "output": out}
            label = f"layer {k}: {getattr(fn, '__name__', type(fn).__name__)}"
            self.layer_results.append(self._run(fn, tasks, aliases, label))
            previous = out
        return self._views[plan[-1][2]]

    def _layer(self, k: int, layer: Any) -> tuple[Any, list[Any], str]:
        if not isinstance(layer, tuple | list) or len(layer) != 3:
            raise TypeError(f"layer {k} must be a tuple (fn, tasks, output), got {layer!r}")
        fn, tasks, out = layer
        if not callable(fn):
            raise TypeError(f"layer {k}: fn must be callable, got {type(fn).__name__}")
        if isinstance(out, np.ndarray):
            names = [n for n, v in self._views.items() if v is out]
            if not names:
                raise ValueError(f"layer {k}: its output is not an array made by job.output")
            out = names[0]
        placement = self._placements.get(out) if isinstance(out, str) else None
        if placement is None or not placement.writable:
            raise ValueError(f"layer {k}: output {out!r} is not an output of this job")
        return fn, list(tasks), out

    def _run(
        self, fn: Any, tasks: Iterable[Any], aliases: Mapping[str, str], name: str | None
    ) -> list[Any]:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        label: str = name or str(getattr(fn, "__name__", type(fn).__name__))
        local = self._executor.local
        # Only a local worker needs the parent's arrays; a process worker maps them by name.
        placements = tuple(
            p if local else replace(p, array=None) for p in self._placements.values()
        )
        worker = worker_class(fn, placements, aliases)
        try:
            return self._executor.run(worker, list(tasks), label)
        finally:
            # A class made at run time lives until the cyclic garbage collector finds it; it
            # must not keep the job's arrays (and their memory) alive until then.
            worker.placements = ()
