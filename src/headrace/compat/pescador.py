"""Pescador's API on headrace: ``import headrace.compat.pescador as pescador``.

Covers pescador 1.x as its documentation describes it (`Streamer` with ``generate`` /
``__call__(max_batches, cycle)`` / ``cycle`` / ``tuples`` / ``activate`` / ``active``, `Mux`
with ``k``, ``lam``, ``pool_weights``, ``with_replacement``, ``prune_empty_seeds``, ``revive``,
``random_state``, `BufferedStreamer`, `ZMQStreamer`) and pescador 3's names (`StochasticMux`,
`ShuffledMux`, `RoundRobinMux`, `ChainMux`, `buffer_stream`, `tuples`, `keras_tuples`,
`streamable`, ``max_iter``). Built only on the public ``headrace`` package.

Differences: `ZMQStreamer` binds a socket file in a private directory (its port arguments are
accepted and ignored) and runs the streamer in a fresh interpreter; `Mux` draws lifetimes as
``1 + Poisson(lam - 1)`` (mean ``lam``) and, like `StochasticMux`, activates streamers in
proportion to their weights (pescador 3 activates them uniformly).
"""

from __future__ import annotations

import functools
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

import headrace as hr


class PescadorError(Exception):
    """The base of the errors this module raises (as pescador's)."""


class DataError(PescadorError, ValueError):
    """Items that cannot be buffered or reformatted."""


class _BadArgument(PescadorError, ValueError):
    """A bad argument (headrace's ValueError / TypeError, re-raised under pescador's base)."""


def _pescador_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (TypeError, ValueError) as exc:
            raise _BadArgument(str(exc)) from exc

    return wrapper


def _random_state(random_state: Any) -> Any:
    """Pescador's reading of ``random_state``: an int seeds a ``np.random.RandomState``, so
    ``random_state=7`` and ``random_state=np.random.RandomState(7)`` draw the same stream."""
    if isinstance(random_state, int | np.integer) and not isinstance(random_state, bool):
        if random_state < 0:
            raise ValueError(f"random_state must be a non-negative seed, got {random_state}")
        return np.random.RandomState(int(random_state))
    return random_state


def _limit(*values: Any) -> int | None:
    """The first limit given among pescador's spellings (``max_iter``, ``max_batches``,
    ``max_items``); a whole float such as ``1e3`` counts as an int."""
    for value in values:
        if value is None:
            continue
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value  # type: ignore[no-any-return]
    return None


class _PescadorAPI(hr.Streamer):
    """Pescador's methods on top of a headrace Streamer (mixed into every class below)."""

    active_count_ = 0
    stream_: Iterator[Any] | None = None

    def iterate(  # type: ignore[override]  # pescador's signature
        self, max_iter: Any = None, max_batches: Any = None, max_items: Any = None
    ) -> Iterator[Any]:
        return self._counted(super().iterate(_limit(max_iter, max_batches, max_items)))

    def generate(self, max_batches: Any = None) -> Iterator[Any]:
        return self.iterate(max_batches=max_batches)

    def cycle(  # type: ignore[override]
        self, max_iter: Any = None, max_batches: Any = None, max_items: Any = None
    ) -> Iterator[Any]:
        return self._counted(super().cycle(_limit(max_iter, max_batches, max_items)))

    def __call__(  # type: ignore[override]
        self,
        max_iter: Any = None,
        cycle: bool = False,
        max_batches: Any = None,
        max_items: Any = None,
    ) -> Iterator[Any]:
        limit = _limit(max_iter, max_batches, max_items)
        return self.cycle(limit) if cycle else self.iterate(limit)

    def __iter__(self) -> Iterator[Any]:
        return self.iterate()

    def tuples(  # type: ignore[override]
        self, *items: Any, cycle: bool = False, max_batches: Any = None, max_iter: Any = None
    ) -> Iterator[tuple[Any, ...]]:
        if not items:
            raise PescadorError("Unable to generate tuples from an empty item set")
        return super().tuples(*items)(_limit(max_iter, max_batches), cycle)

    def _counted(self, items: Iterator[Any]) -> Iterator[Any]:
        self.active_count_ += 1
        try:
            yield from items
        finally:
            self.active_count_ -= 1

    @property
    def active(self) -> int:
        """How many iterations of this streamer are running (true while one is)."""
        return self.active_count_

    def activate(self) -> None:
        """Start an iteration and keep it as ``stream_`` (pescador 1)."""
        self.stream_ = self.iterate()


class Streamer(_PescadorAPI):
    """A reusable generator: ``Streamer(generator_function, *args, **kwargs)`` or
    ``Streamer(iterable)``."""

    @_pescador_errors
    def __init__(self, streamer: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(streamer, *args, **kwargs)

    @property
    def streamer(self) -> Any:
        return self.source


def streamable(function: Callable[..., Any]) -> Callable[..., Streamer]:
    """Decorate a generator function so that calling it makes a `Streamer`."""

    @functools.wraps(function)
    def make(*args: Any, **kwargs: Any) -> Streamer:
        return Streamer(function, *args, **kwargs)

    return make


class StochasticMux(_PescadorAPI, hr.StochasticMux):
    """pescador 3's stochastic mux (``dist="binomial"`` by default, as there)."""

    @_pescador_errors
    def __init__(
        self,
        streamers: Any,
        n_active: int,
        rate: float | None,
        weights: Any = None,
        mode: str = "with_replacement",
        prune_empty_streams: bool = True,
        dist: str = "binomial",
        random_state: Any = None,
    ) -> None:
        hr.StochasticMux.__init__(
            self,
            streamers,
            n_active,
            rate,
            weights=weights,
            mode=mode,
            prune_empty=prune_empty_streams,
            dist=dist,
            random_state=_random_state(random_state),
        )


class Mux(StochasticMux):
    """pescador 1's ``Mux``: ``k`` active seeds, Poisson lifetimes of mean ``lam``."""

    @_pescador_errors
    def __init__(
        self,
        seed_pool: Any,
        k: int,
        lam: float | None = 256.0,
        pool_weights: Any = None,
        with_replacement: bool = True,
        prune_empty_seeds: bool = True,
        revive: bool = False,
        random_state: Any = None,
    ) -> None:
        if with_replacement:
            mode = "with_replacement"
        else:
            mode = "single_active" if revive else "exhaustive"
            if isinstance(seed_pool, Iterable) and not isinstance(seed_pool, Iterator):
                seed_pool = list(seed_pool)
                k = min(k, len(seed_pool)) if seed_pool else k  # pescador 1 fills what it can
        super().__init__(
            seed_pool, k, lam, pool_weights, mode, prune_empty_seeds, "poisson", random_state
        )


class ShuffledMux(_PescadorAPI, hr.ShuffledMux):
    @_pescador_errors
    def __init__(self, streamers: Any, weights: Any = None, random_state: Any = None) -> None:
        hr.ShuffledMux.__init__(
            self, streamers, weights=weights, random_state=_random_state(random_state)
        )


class RoundRobinMux(_PescadorAPI, hr.RoundRobinMux):
    @_pescador_errors
    def __init__(self, streamers: Any, mode: str = "exhaustive", random_state: Any = None) -> None:
        hr.RoundRobinMux.__init__(
            self, streamers, mode=mode, random_state=_random_state(random_state)
        )


class ChainMux(_PescadorAPI, hr.ChainMux):
    @_pescador_errors
    def __init__(self, streamers: Any, mode: str = "exhaustive", random_state: Any = None) -> None:
        if isinstance(streamers, Iterator):
            streamers = list(streamers)  # a generator of streamers, as pescador allows
        hr.ChainMux.__init__(self, streamers, mode=mode)


class _DataErrors(hr.Streamer):
    """Another streamer's items, with buffering errors raised as `DataError`."""

    def _open(self) -> Iterator[Any]:
        return _data_errors(super()._open())


def _data_errors(items: Iterator[Any]) -> Iterator[Any]:
    try:
        yield from items
    except (TypeError, ValueError, KeyError) as exc:
        raise DataError(f"cannot buffer these items: {exc}") from exc
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()


class BufferedStreamer(_PescadorAPI):
    """Concatenate items (dicts of arrays of shape ``(n, ...)``) along axis 0 into batches of
    exactly ``buffer_size`` rows; with ``strict_batch_size=False`` a last, shorter one too.
    Built on ``hr.Streamer.rebatch``."""

    @_pescador_errors
    def __init__(self, streamer: Any, buffer_size: int, strict_batch_size: bool = True) -> None:
        inner = streamer if isinstance(streamer, hr.Streamer) else Streamer(streamer)
        if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 1:
            raise ValueError(f"buffer_size must be an integer >= 1, got {buffer_size!r}")
        super().__init__(_DataErrors(inner.rebatch(buffer_size, drop_last=strict_batch_size)))
        self.buffer_size = buffer_size


class ZMQStreamer(_PescadorAPI, hr.ZMQStreamer):  # type: ignore[misc]
    """Runs ``streamer`` in a background process and receives its items over ZeroMQ."""

    @_pescador_errors
    def __init__(
        self,
        streamer: Any,
        min_port: int = 49152,
        max_port: int = 65535,
        max_tries: int = 100,
        copy: bool = False,
        timeout: float | None = 5,
    ) -> None:
        del min_port, max_port, max_tries  # no TCP port: a socket file in a private directory
        wait = 5 if timeout is None else timeout
        hr.ZMQStreamer.__init__(self, streamer, copy=copy, timeout=wait)


class _Stack:
    """pescador's stacking of buffered items: a new axis 0, or concatenation along ``axis``."""

    def __init__(self, axis: int | None) -> None:
        self.axis = axis

    def __call__(self, data: list[Any]) -> dict[Any, Any]:
        try:
            if self.axis is None:
                return {k: np.array([x[k] for x in data]) for k in data[0]}
            return {k: np.concatenate([x[k] for x in data], axis=self.axis) for k in data[0]}
        except (TypeError, AttributeError, KeyError, ValueError) as exc:
            raise DataError(f"Malformed data stream: {exc}") from exc


def buffer_stream(
    stream: Iterable[Any], buffer_size: int, partial: bool = False, axis: int | None = None
) -> Iterator[Any]:
    """Collect ``buffer_size`` items into one (pescador 3): stacked along a new axis 0, or
    concatenated along ``axis``; a last, smaller one only with ``partial=True``. Built on
    ``hr.Streamer.batch``."""
    batched = hr.Streamer(stream).batch(buffer_size, drop_last=not partial, collate=_Stack(axis))
    return iter(batched)


def tuples(stream: Iterable[Any], *keys: Any) -> Iterator[tuple[Any, ...]]:
    """Each item as ``(item[key1], item[key2], ...)``."""
    if not keys:
        raise PescadorError("Unable to generate tuples from an empty item set")
    return iter(hr.Streamer(stream).tuples(*keys))


def keras_tuples(stream: Iterable[Any], inputs: Any = None, outputs: Any = None) -> Iterator[Any]:
    """Each item as ``(x, y)`` for Keras: one array per key, a list for a list of keys."""
    if not inputs and not outputs:
        raise PescadorError("At least one key must be given for `inputs` or `outputs`")
    return iter(hr.Streamer(stream).keras_tuples(inputs, outputs))


# ``pescador.mux.Mux`` (the seed's examples spell it so) and the other submodules' names.
mux = types.ModuleType(f"{__name__}.mux", "pescador's mux module")
for _name in ("Mux", "StochasticMux", "ShuffledMux", "RoundRobinMux", "ChainMux"):
    setattr(mux, _name, globals()[_name])
maps = types.ModuleType(f"{__name__}.maps", "pescador's maps module")
for _name in ("buffer_stream", "tuples", "keras_tuples"):
    setattr(maps, _name, globals()[_name])
sys.modules[mux.__name__] = mux
sys.modules[maps.__name__] = maps

__all__ = [
    "BufferedStreamer",
    "ChainMux",
    "DataError",
    "Mux",
    "PescadorError",
    "RoundRobinMux",
    "ShuffledMux",
    "StochasticMux",
    "Streamer",
    "ZMQStreamer",
    "buffer_stream",
    "keras_tuples",
    "maps",
    "mux",
    "streamable",
    "tuples",
]
