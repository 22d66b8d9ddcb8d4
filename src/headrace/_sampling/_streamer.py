"""Streamers: restartable, picklable sources of items (Pescador's ``Streamer``).

Owns: `Streamer` (a generator function with its arguments, or an iterable, started afresh on
every iteration; at most ``max_items``; cycling; buffering with the bodies of `Stream.batch` /
`Stream.rebatch` from `_stages`, in the iterating thread; tuples of keys for Keras) and the
random-state helpers the muxes and samplers share. The mux family (`_mux`), the file samplers
(`_samplers`) and background streaming (`_zmq`) build on it.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .._stages import batch_body, rebatch_body

log = logging.getLogger("headrace")

#: What a ``random_state`` may be: None (fresh entropy), a non-negative int (a seed), or a
#: NumPy ``Generator`` / legacy ``RandomState`` to draw from.
RandomState = int | np.random.Generator | np.random.RandomState | None


def make_rng(random_state: RandomState, arg: str = "random_state") -> Any:
    """A generator for ``random_state``: a seed makes a new one, a generator is used as is."""
    if random_state is None:
        return np.random.default_rng()
    if isinstance(random_state, np.random.Generator | np.random.RandomState):
        return random_state
    if isinstance(random_state, int | np.integer) and not isinstance(random_state, bool):
        if random_state < 0:
            raise ValueError(f"{arg} must be a non-negative seed, got {random_state}")
        return np.random.default_rng(int(random_state))
    raise TypeError(
        f"{arg} must be None, a non-negative int seed or a numpy Generator / RandomState, "
        f"got {type(random_state).__name__}"
    )


def child_rng(rng: Any) -> np.random.Generator:
    """A new generator seeded by a draw from ``rng`` (so that a copy sent to another process
    draws differently from the next copy, yet reproducibly)."""
    if isinstance(rng, np.random.Generator):
        return np.random.default_rng(int(rng.integers(2**63)))
    return np.random.default_rng(int(rng.randint(2**31)))


def check_max_items(max_items: object, arg: str = "max_items") -> int | None:
    if max_items is None:
        return None
    if isinstance(max_items, bool) or not isinstance(max_items, int | np.integer):
        raise TypeError(f"{arg} must be None or an integer >= 0, got {max_items!r}")
    if max_items < 0:
        raise ValueError(f"{arg} must be None or an integer >= 0, got {max_items}")
    return int(max_items)


def check_positive(value: object, arg: str) -> int:
    """``value`` as an int if it is an integer >= 1, else `TypeError` / `ValueError`."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{arg} must be an integer >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{arg} must be >= 1, got {value}")
    return int(value)


def close_iterator(it: object) -> None:
    """Close a generator (or anything with ``close``) at once, so that what it holds (a run,
    a background process) stops now rather than when it is garbage-collected."""
    close = getattr(it, "close", None)
    if close is not None:
        close()


class Streamer:
    """A restartable, picklable source of items.

    Wraps a generator function and its arguments (called afresh on every iteration) or an
    iterable (iterated afresh). A Streamer is a valid source for `from_iterable`, can be sent
    to another process (as far as its function and arguments can be pickled), and is what the
    muxes mix: every mux is itself a Streamer, so muxes nest. ``batch`` / ``rebatch`` buffer
    its items as the pipeline stages of those names do, without a pipeline.

    Parameters
    ----------
    source : callable or iterable
        A generator function (or any callable returning an iterable), called with ``*args`` and
        ``**kwargs``; or an iterable such as a list, a `Stream` or another Streamer.
    *args, **kwargs
        Passed to ``source`` when it is called; only allowed with a callable.

    Examples
    --------
    >>> import headrace as hr
    >>> def count(n):
    ...     yield from range(n)
    >>> s = hr.Streamer(count, 3)
    >>> list(s), list(s)  # restartable: each iteration calls count(3) again
    ([0, 1, 2], [0, 1, 2])
    >>> list(s.cycle(max_items=7))
    [0, 1, 2, 0, 1, 2, 0]
    >>> hr.from_iterable(s).map(lambda x: x * 10).collect()
    [0, 10, 20]
    >>> pairs = hr.Streamer([{"x": 1, "y": 2}, {"x": 3, "y": 4}])
    >>> list(pairs.tuples("x", "y"))
    [(1, 2), (3, 4)]
    """

    def __init__(self, source: Any, /, *args: Any, **kwargs: Any) -> None:
        if args or kwargs:
            if not callable(source):
                raise TypeError(
                    f"arguments were given but the source ({type(source).__name__}) is not "
                    "callable: pass arguments only with a generator function"
                )
        elif not (callable(source) or isinstance(source, Iterable)):
            raise TypeError(
                "Streamer needs a generator function or an iterable, got "
                f"{type(source).__name__} {source!r:.80}"
            )
        self.source = source
        self.args = args
        self.kwargs = kwargs

    def __repr__(self) -> str:
        name = getattr(self.source, "__name__", type(self.source).__name__)
        return f"<{type(self).__name__} {name}>"

    # --- what subclasses override -------------------------------------------------------

    def _open(self) -> Iterator[Any]:
        """A fresh iterator over one pass of this streamer."""
        source = self.source
        if not (self.args or self.kwargs) and isinstance(source, Iterable):
            return iter(source)
        made = source(*self.args, **self.kwargs)
        if not isinstance(made, Iterable):
            name = getattr(source, "__name__", repr(source))
            raise TypeError(
                f"the Streamer's function {name} returned {type(made).__name__}, not an "
                "iterable: pass a generator function (one that uses `yield`)"
            )
        return iter(made)

    def _detached(self) -> Streamer:
        """A copy to send to another process: random states inside are re-seeded from this
        one's, so each copy draws differently (and reproducibly)."""
        if isinstance(self.source, Streamer):
            clone = copy.copy(self)
            clone.source = self.source._detached()
            return clone
        return self

    # --- iterating ----------------------------------------------------------------------

    def iterate(self, max_items: int | None = None) -> Iterator[Any]:
        """Start a fresh pass and yield at most ``max_items`` items (all when None)."""
        return self._pass(check_max_items(max_items))

    def _pass(self, limit: int | None) -> Iterator[Any]:
        if limit == 0:
            return
        it = self._open()
        try:
            if limit is None:
                yield from it
            else:
                for _, item in zip(range(limit), it, strict=False):
                    yield item
        finally:
            close_iterator(it)

    def cycle(self, max_items: int | None = None) -> Iterator[Any]:
        """Restart the pass whenever it ends, forever (or for ``max_items`` items).

        A pass that yields nothing ends the cycle (with a logged warning) instead of looping
        forever."""
        return self._cycle(check_max_items(max_items))

    def _cycle(self, limit: int | None) -> Iterator[Any]:
        count = 0
        while limit is None or count < limit:
            before = count
            it = self._pass(None if limit is None else limit - count)
            try:
                for item in it:
                    count += 1
                    yield item
            finally:
                close_iterator(it)
            if count == before:
                log.warning("%r yielded nothing in a full pass; cycling it stops here", self)
                return

    def __call__(self, max_items: int | None = None, cycle: bool = False) -> Iterator[Any]:
        """``iterate(max_items)``, or ``cycle(max_items)`` when ``cycle`` is true."""
        return self.cycle(max_items) if cycle else self.iterate(max_items)

    def __iter__(self) -> Iterator[Any]:
        return self.iterate()

    # --- buffering ----------------------------------------------------------------------

    def batch(self, size: int, *, drop_last: bool = False, collate: Any = "auto") -> Streamer:
        """A Streamer of groups of ``size`` items, as `Stream.batch` makes them, built in the
        thread that iterates it (no pipeline, no threads)."""
        size = check_positive(size, "size")
        if not (collate == "auto" or collate is None or callable(collate)):
            raise TypeError(f"collate must be 'auto', None or a callable, got {collate!r}")
        return _Buffered(self, "batch", size, bool(drop_last), collate)

    def rebatch(self, rows: int, *, drop_last: bool = False) -> Streamer:
        """A Streamer of batches of exactly ``rows`` rows, as `Stream.rebatch` makes them:
        arrays (or dicts of arrays) of any length concatenated and split along axis 0
        (Pescador's buffered streamer), in the thread that iterates it.

        Examples
        --------
        >>> import headrace as hr, numpy as np
        >>> rows = hr.Streamer([{"X": np.zeros((3, 2))}, {"X": np.ones((2, 2))}])
        >>> [b["X"].shape for b in rows.rebatch(4)]
        [(4, 2), (1, 2)]
        """
        return _Buffered(self, "rebatch", check_positive(rows, "rows"), bool(drop_last), None)

    # --- adapters -----------------------------------------------------------------------

    def tuples(self, *keys: Any) -> Streamer:
        """A Streamer of ``(item[key1], item[key2], ...)`` for each item, like `batch` and
        `rebatch`: ``s.tuples("X", "Y")(max_items=10)``, ``s.tuples("X", "Y").cycle()``."""
        if not keys:
            raise ValueError("tuples needs at least one key, e.g. tuples('X', 'Y')")
        return Streamer(_tuple_pass, self, keys)

    def keras_tuples(
        self,
        inputs: Any = None,
        outputs: Any = None,
    ) -> Streamer:
        """A Streamer of ``(x, y)`` pairs for Keras: a key gives one array, a list of keys a
        list of arrays, None gives None. ``model.fit`` takes a generator:
        ``model.fit(s.keras_tuples("X", "Y").cycle(), steps_per_epoch=...)``."""
        in_keys, in_one = _key_list("inputs", inputs)
        out_keys, out_one = _key_list("outputs", outputs)
        if not in_keys and not out_keys:
            raise ValueError("keras_tuples needs at least one key in inputs or outputs")
        return Streamer(_keras_pass, self, (in_keys, in_one, out_keys, out_one))


def as_streamer(obj: Any, what: str = "streamer") -> Streamer:
    """``obj`` itself if it is a Streamer, else a Streamer over it (an iterable)."""
    if isinstance(obj, Streamer):
        return obj
    if callable(obj) and not isinstance(obj, Iterable):
        raise TypeError(
            f"{what} must be a Streamer or an iterable, got the callable {obj!r:.80}; wrap a "
            "generator function with its arguments as hr.Streamer(fn, *args)"
        )
    if not isinstance(obj, Iterable):
        raise TypeError(f"{what} must be a Streamer or an iterable, got {type(obj).__name__}")
    return Streamer(obj)


def _pick(item: Any, key: Any) -> Any:
    if not isinstance(item, Mapping | Sequence) or isinstance(item, str | bytes):
        raise TypeError(f"tuples needs items indexed by key, got {type(item).__name__}")
    try:
        return item[key]
    except (KeyError, IndexError):
        have = list(item) if isinstance(item, Mapping) else f"{len(item)} entries"
        raise KeyError(f"key {key!r} is missing from an item that has keys {have}") from None


def _tuples(items: Iterator[Any], keys: tuple[Any, ...]) -> Iterator[tuple[Any, ...]]:
    try:
        for item in items:
            yield tuple(_pick(item, key) for key in keys)
    finally:
        close_iterator(items)


def _tuple_pass(source: Streamer, keys: tuple[Any, ...]) -> Iterator[tuple[Any, ...]]:
    return _tuples(iter(source), keys)


def _keras_pass(source: Streamer, spec: tuple[Any, bool, Any, bool]) -> Iterator[Any]:
    return _keras_tuples(iter(source), *spec)


def _key_list(arg: str, keys: Any) -> tuple[list[Any], bool]:
    if keys is None:
        return [], False
    if isinstance(keys, str):
        return [keys], True
    if isinstance(keys, Iterable):
        return list(keys), False
    raise TypeError(f"{arg} must be a key, a list of keys or None, got {keys!r}")


def _keras_tuples(
    items: Iterator[Any], in_keys: list[Any], in_one: bool, out_keys: list[Any], out_one: bool
) -> Iterator[tuple[Any, Any]]:
    def part(item: Any, keys: list[Any], one: bool) -> Any:
        if not keys:
            return None
        values = [_pick(item, k) for k in keys]
        return values[0] if one else values

    try:
        for item in items:
            yield part(item, in_keys, in_one), part(item, out_keys, out_one)
    finally:
        close_iterator(items)


class _Buffered(Streamer):
    """Another Streamer's items through the body of `Stream.batch` or `Stream.rebatch`."""

    def __init__(self, inner: Streamer, kind: str, n: int, drop_last: bool, collate: Any):
        super().__init__(inner)
        self.kind, self.n, self.drop_last, self.collate = kind, n, drop_last, collate

    def __repr__(self) -> str:
        return f"<{self.kind}({self.n}) of {self.source!r}>"

    def _open(self) -> Iterator[Any]:
        if self.kind == "rebatch":
            body = rebatch_body(self.n, self.drop_last)
        else:
            body = batch_body(self.n, self.drop_last, self.collate)
        return _through(body, iter(self.source))


def _through(body: Any, items: Iterator[Any]) -> Iterator[Any]:
    try:
        yield from body(items)
    finally:
        close_iterator(items)
