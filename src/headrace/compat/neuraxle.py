"""Neuraxle's queued pipelines on headrace: ``from headrace.compat.neuraxle import ...``.

Covers ``neuraxle.distributed.streaming`` as its documentation describes it:
`SequentialQueuedPipeline` (and its older name `QueuedPipeline`), `ParallelQueuedFeatureUnion`
and `MinibatchError`, with every documented step form (``step``, ``(name, step)``,
``(n_workers, step)``, ``(name, n_workers, step)``, ``(name, n_workers, max_queued, step)``,
``(name, n_workers, worker_args, step)``, ``(name, n_workers, worker_args, max_queued, step)``)
and pipeline option. Minimal stand-ins for Neuraxle's `BaseStep`, `NonFittableMixin`,
`Identity`, `HyperparameterSamples`, `StripAbsentValues` and numpy step `MultiplyByN` let the
documented examples run without Neuraxle; real Neuraxle steps work too (any object with
``transform(data_inputs)``). Built only on the public ``headrace`` package.

How a pipeline maps onto headrace: the data inputs are cut into minibatches of ``batch_size``
(the last one padded, kept short or dropped as Neuraxle does); each step is a `Stream.map`
stage over minibatches with its own worker count, on threads or (``use_processes=True``)
processes, its channel bounded by ``max_queued_minibatches``; the outputs are joined in
minibatch order. A feature union's branches all read the same minibatches (a broadcast)
and meet again in a `headrace.zip`. With ``worker_args``, minibatch ``k`` is transformed by a
copy of the step carrying ``worker_args[k % len(worker_args)]``, so the result does not depend
on scheduling.
"""

from __future__ import annotations

import copy
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import headrace as hr

__all__ = [
    "BaseStep",
    "HyperparameterSamples",
    "Identity",
    "MinibatchError",
    "MultiplyByN",
    "NonFittableMixin",
    "ParallelQueuedFeatureUnion",
    "QueuedPipeline",
    "SequentialQueuedPipeline",
    "StripAbsentValues",
]


# --- stand-ins for the Neuraxle steps the examples use -------------------------------------


class HyperparameterSamples(dict[str, Any]):
    """Neuraxle's hyperparameter values (a plain dict here)."""


class StripAbsentValues:
    """As ``default_value_data_inputs``: keep the last minibatch short instead of padding it."""


class BaseStep:
    """A step: ``transform(data_inputs) -> outputs`` on one minibatch (a list).

    Examples
    --------
    >>> from headrace.compat.neuraxle import BaseStep
    >>> class AddOne(BaseStep):
    ...     def transform(self, data_inputs):
    ...         return [x + 1 for x in data_inputs]
    >>> AddOne().transform([1, 2])
    [2, 3]
    """

    def __init__(self, hyperparams: dict[str, Any] | None = None, name: str | None = None):
        self.hyperparams = HyperparameterSamples(hyperparams or {})
        self.name = name or type(self).__name__

    def set_name(self, name: str) -> BaseStep:
        self.name = name
        return self

    def set_hyperparams(self, hyperparams: dict[str, Any]) -> BaseStep:
        self.hyperparams = HyperparameterSamples(hyperparams)
        return self

    def get_hyperparams(self) -> HyperparameterSamples:
        return self.hyperparams

    def fit(self, data_inputs: Any, expected_outputs: Any = None) -> BaseStep:
        return self

    def transform(self, data_inputs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define transform(data_inputs)")

    def fit_transform(self, data_inputs: Any, expected_outputs: Any = None) -> tuple[Any, Any]:
        """Fit, then transform: returns ``(fitted step, outputs)`` as Neuraxle does."""
        fitted = self.fit(data_inputs, expected_outputs)
        return fitted, fitted.transform(data_inputs)


class NonFittableMixin:
    """Marks a step that has nothing to fit (so a queued pipeline transforms in parallel)."""

    def __init__(self) -> None:
        pass

    def fit(self, data_inputs: Any, expected_outputs: Any = None) -> Any:
        return self


class Identity(NonFittableMixin, BaseStep):
    """Returns its data inputs unchanged."""

    def __init__(self, name: str | None = None) -> None:
        BaseStep.__init__(self, name=name)

    def transform(self, data_inputs: Any) -> Any:
        return data_inputs


class MultiplyByN(NonFittableMixin, BaseStep):
    """Multiplies every data input by the hyperparameter ``multiply_by``."""

    def __init__(self, multiply_by: Any = 1) -> None:
        BaseStep.__init__(self, hyperparams={"multiply_by": multiply_by})

    def transform(self, data_inputs: Any) -> Any:
        factor = self.hyperparams["multiply_by"]
        if isinstance(data_inputs, np.ndarray):
            return data_inputs * factor
        return [None if x is None else x * factor for x in data_inputs]


# --- errors --------------------------------------------------------------------------------


class MinibatchError:
    """What failed: the step, the minibatch and the worker's traceback.

    The exception a step raises reaches the caller with its own type; its
    ``minibatch_error`` attribute holds this record.
    """

    def __init__(
        self, minibatch: Any, step_name: str, err: BaseException, traceback_msg: str | None = None
    ) -> None:
        self.minibatch = minibatch
        self.minibatch_dact = minibatch  # Neuraxle's name (a data container there)
        self.step_name = step_name
        self.err = err
        self.traceback_msg = traceback_msg

    def is_error(self) -> bool:
        return True

    def get_err(self) -> BaseException:
        return self.err

    def __repr__(self) -> str:
        return f"MinibatchError(step={self.step_name!r}, err={self.err!r})"


# --- what runs on a worker -----------------------------------------------------------------


def _step_fn(step: Any, name: str, worker_args: Sequence[Any]) -> Callable[[Any], Any]:
    """Transforms one ``(index, minibatch)``; the copies carry the ``worker_args``."""
    copies = [step]
    if worker_args:
        copies = []
        for args in worker_args:
            clone = copy.deepcopy(step)
            flat = list(args)
            if flat and isinstance(flat[0], tuple):  # [(name, value), ...]
                flat = [x for pair in flat for x in pair]
            for key, value in zip(flat[::2], flat[1::2], strict=True):
                setattr(clone, key, value)
            copies.append(clone)

    def transform(task: tuple[int, Any]) -> tuple[int, Any]:
        index, minibatch = task
        try:
            return index, copies[index % len(copies)].transform(minibatch)
        except Exception as exc:
            exc.minibatch_error = MinibatchError(  # type: ignore[attr-defined]
                minibatch, name, exc, traceback.format_exc()
            )
            raise

    transform.__name__ = name
    return transform


# --- the pipelines -------------------------------------------------------------------------


def _count(what: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class _Step:
    """One parsed step tuple."""

    def __init__(self, name: str, workers: int, worker_args: Any, max_queued: Any, step: Any):
        if not callable(getattr(step, "transform", None)):
            raise TypeError(f"step {name!r} must have a transform(data_inputs) method: {step!r}")
        self.name, self.step = name, step
        self.workers = _count(f"n_workers of step {name!r}", workers)
        self.worker_args = list(worker_args or [])
        self.max_queued = None if not max_queued else _count("max_queued_minibatches", max_queued)


class SequentialQueuedPipeline(BaseStep):
    """Steps run one after the other on minibatches, each on its own pool of workers.

    Parameters
    ----------
    steps : list
        Each a step or a tuple ``(name, step)``, ``(n_workers, step)``,
        ``(name, n_workers, step)``, ``(name, n_workers, max_queued, step)``,
        ``(name, n_workers, worker_args, step)`` or
        ``(name, n_workers, worker_args, max_queued, step)``.
    batch_size : int
        Data inputs per minibatch.
    n_workers_per_step : int, optional
        Workers of a step whose tuple gives none (default 1); ``n_workers`` is an alias.
    max_queued_minibatches : int, optional
        Minibatches waiting after each step (default: headrace's channel size).
    data_joiner : step, optional
        Gets the list of every minibatch's outputs (in order) and returns the result.
        Default: the outputs concatenated into an array.
    use_processes : bool
        Workers are processes (default: threads, as in Neuraxle).
    use_savers : bool
        Accepted; headrace sends steps to processes with cloudpickle, no saver needed.
    keep_incomplete_batch : bool
        Keep (default) or drop a last minibatch shorter than ``batch_size``.
    default_value_data_inputs : any or StripAbsentValues
        Pads the last minibatch to ``batch_size`` (default None, as Neuraxle);
        `StripAbsentValues` keeps it short.
    default_value_expected_outputs : any
        Accepted (queued pipelines transform only).

    Examples
    --------
    >>> from headrace.compat.neuraxle import Identity, MultiplyByN, SequentialQueuedPipeline
    >>> p = SequentialQueuedPipeline(
    ...     [
    ...         ("step_a", Identity()),
    ...         ("step_b", 2, MultiplyByN(10)),
    ...     ],
    ...     batch_size=2,
    ... )
    >>> p.transform([1, 2, 3, 4]).tolist()
    [10, 20, 30, 40]
    """

    def __init__(
        self,
        steps: list[Any],
        batch_size: int,
        n_workers_per_step: int | None = None,
        max_queued_minibatches: int | None = None,
        data_joiner: Any = None,
        use_processes: bool = False,
        use_savers: bool = False,
        keep_incomplete_batch: bool = True,
        default_value_data_inputs: Any = None,
        default_value_expected_outputs: Any = None,
        *,
        n_workers: int | None = None,
    ) -> None:
        BaseStep.__init__(self)
        self.batch_size = _count("batch_size", batch_size)
        self.n_workers_per_step = n_workers_per_step or n_workers or 1
        self.max_queued_minibatches = max_queued_minibatches
        self.data_joiner = data_joiner
        self.use_processes = use_processes
        self.use_savers = use_savers
        self.keep_incomplete_batch = keep_incomplete_batch
        self.default_value_data_inputs = default_value_data_inputs
        self.default_value_expected_outputs = default_value_expected_outputs
        if not isinstance(steps, list | tuple) or not steps:
            raise ValueError("steps must be a non-empty list of steps or step tuples")
        self.steps = [self._parse(s) for s in steps]
        names = [s.name for s in self.steps]
        for i, s in enumerate(self.steps):
            if names.count(s.name) > 1:
                s.name = f"{s.name}_{i}"
        self.report: hr.Report | None = None

    def _parse(self, spec: Any) -> _Step:
        if not isinstance(spec, tuple):
            spec = (spec,)
        if not 1 <= len(spec) <= 5:
            raise ValueError(f"a step tuple has 1 to 5 entries, got {len(spec)}: {spec!r}")
        step = spec[-1]
        name: str = getattr(step, "name", None) or type(step).__name__
        workers, args, queued = self.n_workers_per_step, None, self.max_queued_minibatches
        if len(spec) == 2:
            if isinstance(spec[0], str):
                name = spec[0]
            else:
                workers = spec[0]
        elif len(spec) >= 3:
            name, workers = spec[0], spec[1]
            if len(spec) == 4:
                if isinstance(spec[2], list | tuple):
                    args = spec[2]
                else:
                    queued = spec[2]
            elif len(spec) == 5:
                args, queued = spec[2], spec[3]
        return _Step(str(name), workers, args, queued, step)

    # --- building --------------------------------------------------------------------------

    def _minibatches(self, data_inputs: Any) -> list[tuple[int, Any]]:
        size, items = self.batch_size, data_inputs
        batches: list[tuple[int, Any]] = []
        for start in range(0, len(items), size):
            batch = items[start : start + size]
            if len(batch) < size:
                if not self.keep_incomplete_batch:
                    break
                pad = self.default_value_data_inputs
                if not isinstance(pad, StripAbsentValues) and pad is not StripAbsentValues:
                    batch = list(batch) + [pad] * (size - len(batch))
            batches.append((len(batches), batch))
        return batches

    def _chain(self, stream: hr.Stream, steps: list[_Step]) -> hr.Stream:
        backend = "process" if self.use_processes else "thread"
        for s in steps:
            stream = stream.map(
                _step_fn(s.step, s.name, s.worker_args),
                workers=s.workers,
                backend=backend,
                maxsize=s.max_queued,
                name=s.name,
            )
        return stream

    def _stream(self, batches: list[tuple[int, Any]]) -> hr.Stream:
        return self._chain(hr.from_iterable(batches, name="minibatches"), self.steps)

    def _join(self, results: list[Any]) -> Any:
        outputs = [out for _, out in results]
        if self.data_joiner is not None:
            return self.data_joiner.transform(outputs)
        return _concatenate(outputs)

    # --- running ---------------------------------------------------------------------------

    def transform(self, data_inputs: Any) -> Any:
        """Transform ``data_inputs`` minibatch by minibatch through every step."""
        if isinstance(data_inputs, np.ndarray) or hasattr(data_inputs, "__getitem__"):
            items = data_inputs
        else:
            items = list(data_inputs)
        batches = self._minibatches(items)
        if not batches:
            return self._join([])
        with self._stream(batches).open() as run:
            results = list(run)
        self.report = run.report()
        return self._join(results)

    def _fittable(self) -> bool:
        return any(
            not isinstance(s.step, NonFittableMixin)
            and callable(getattr(s.step, "fit", None))
            and type(s.step).fit is not BaseStep.fit
            for s in self.steps
        )

    def fit(self, data_inputs: Any, expected_outputs: Any = None) -> SequentialQueuedPipeline:
        """Fit the steps one after the other, in this process."""
        self.fit_transform(data_inputs, expected_outputs)
        return self

    def fit_transform(self, data_inputs: Any, expected_outputs: Any = None) -> tuple[Any, Any]:
        """``(self, outputs)``: steps with something to fit run in order in this process (as
        in Neuraxle); otherwise the pipeline transforms in parallel."""
        if not self._fittable():
            return self, self.transform(data_inputs)
        outputs = data_inputs
        for s in self.steps:
            fitted, outputs = _fit_transform(s.step, outputs, expected_outputs)
            s.step = fitted
        return self, outputs


def _fit_transform(step: Any, data_inputs: Any, expected_outputs: Any) -> tuple[Any, Any]:
    if callable(getattr(step, "fit_transform", None)):
        result = step.fit_transform(data_inputs, expected_outputs)
        if isinstance(result, tuple) and len(result) == 2:
            return result
        return step, result
    return step.fit(data_inputs, expected_outputs), step.transform(data_inputs)


def _concatenate(outputs: list[Any]) -> Any:
    flat: list[Any] = []
    for out in outputs:
        flat.extend(out)
    try:
        return np.array(flat)
    except ValueError:  # ragged items: an array of objects
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
        return array


QueuedPipeline = SequentialQueuedPipeline


class ParallelQueuedFeatureUnion(SequentialQueuedPipeline):
    """Every step (branch) transforms every minibatch, in parallel; the outputs are joined.

    The result is each branch's outputs, in minibatch order, one branch after the other (as
    Neuraxle 0.8 joins them); a ``data_joiner`` gets, per branch, the list of its minibatch
    outputs.

    Examples
    --------
    >>> from headrace.compat.neuraxle import MultiplyByN, ParallelQueuedFeatureUnion
    >>> p = ParallelQueuedFeatureUnion(
    ...     [("2x", MultiplyByN(2)), ("3x", MultiplyByN(3))], batch_size=2
    ... )
    >>> p.transform([1, 2]).tolist()
    [2, 4, 3, 6]
    """

    def _stream(self, batches: list[tuple[int, Any]]) -> hr.Stream:
        source = hr.from_iterable(batches, name="minibatches")
        return hr.zip(*(self._chain(source, [s]) for s in self.steps), name="join")

    def _join(self, results: list[Any]) -> Any:
        branches = [[outs[b][1] for outs in results] for b in range(len(self.steps))]
        if self.data_joiner is not None:
            return self.data_joiner.transform(branches)
        return _concatenate([out for branch in branches for out in branch])
