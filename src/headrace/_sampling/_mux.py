"""The mux family: Streamers that mix other Streamers (Pescador's muxes).

Owns: `StochasticMux` (a set of ``n_active`` streamers, each active for a random number of
items, chosen by weight, in three modes, with pruning of empty streamers), `ShuffledMux` (all
streamers active, items drawn by weight), `RoundRobinMux` and `ChainMux`. Every mux is a
`Streamer`, so muxes nest and feed `from_iterable`. Builds on `_streamer` only.
"""

from __future__ import annotations

import copy
import math
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import accumulate
from typing import Any

import numpy as np

from ._streamer import (
    RandomState,
    Streamer,
    as_streamer,
    child_rng,
    close_iterator,
    make_rng,
)

MODES = ("with_replacement", "single_active", "exhaustive")
DISTS = ("poisson", "binomial", "constant")
ROUND_ROBIN_MODES = ("exhaustive", "cycle", "permuted_cycle")
CHAIN_MODES = ("exhaustive", "cycle")
#: Uniform draws taken from the generator in one call. One NumPy call per item costs about a
#: microsecond, more than the rest of the mux's work per item; a block of 1024 makes it ~1 ns.
UNIFORM_BLOCK = 1024
#: Above this selection probability the binomial lifetime is replaced by its Poisson limit
#: (pescador's threshold; the binomial's n = (rate - 1) / (1 - p) grows without bound).
BINOMIAL_LIMIT = 0.9999

#: Draws one lifetime: (generator, probability of picking the new streamer) -> items or None.
Lifetime = Callable[[Any, float], int | None]


def _pool(streamers: Any, who: str) -> list[Streamer]:
    if isinstance(streamers, Streamer | str | bytes) or not isinstance(streamers, Iterable):
        raise TypeError(f"{who} takes a list of streamers, got {type(streamers).__name__}")
    pool = [as_streamer(s, f"{who} streamers[{i}]") for i, s in enumerate(streamers)]
    if not pool:
        raise ValueError(f"{who} needs at least one streamer, got an empty pool")
    return pool


def _weights(weights: Any, n: int, who: str) -> np.ndarray:
    if weights is None:
        return np.full(n, 1.0 / n)
    try:
        w = np.asarray(weights, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"{who} weights must be a list of numbers, got {weights!r:.80}") from None
    if w.ndim != 1 or len(w) != n:
        raise ValueError(
            f"{who} weights has {w.size} entries for {n} streamers: give one weight per streamer"
        )
    if not np.isfinite(w).all():
        raise ValueError(f"{who} weights must be finite numbers, got {w.tolist()}")
    if (w < 0).any():
        bad = int(np.flatnonzero(w < 0)[0])
        raise ValueError(f"{who} weights must be >= 0, but weights[{bad}] is {w[bad]}")
    if w.sum() <= 0:
        raise ValueError(f"{who} weights sum to zero: give at least one streamer a weight > 0")
    return w / w.sum()  # type: ignore[no-any-return]


def _check_mode(who: str, mode: object, modes: tuple[str, ...], arg: str = "mode") -> str:
    if mode not in modes:
        raise ValueError(f"{who} {arg} must be one of {modes}, got {mode!r}")
    return str(mode)


class _Mux(Streamer):
    """A Streamer over a pool of streamers, with its own random generator."""

    def __init__(self, streamers: Any, random_state: RandomState) -> None:
        self.streamers: list[Streamer] = _pool(streamers, type(self).__name__)
        self._rng = make_rng(random_state)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {len(self.streamers)} streamers>"

    def _detached(self) -> Streamer:
        clone = copy.copy(self)
        clone._rng = child_rng(self._rng)
        clone.streamers = [s._detached() for s in self.streamers]
        return clone


class StochasticMux(_Mux):
    """Mix a pool of streamers, keeping ``n_active`` of them active at a time.

    A streamer is chosen for an active slot by ``weights``; each item comes from one active
    slot, chosen in proportion to the weight of its streamer. An active streamer yields a
    random number of items with mean ``rate`` (its lifetime), or runs until exhausted when
    ``rate`` is None; then another streamer takes its slot. The mux ends when no streamer can
    be activated.

    Parameters
    ----------
    streamers : list of Streamer or iterable
        The pool. Iterables are wrapped in a `Streamer`.
    n_active : int >= 1
        How many streamers are active at once.
    rate : float >= 1 or None
        Mean lifetime in items. None: each active streamer runs until it is exhausted.
    weights : list of float, optional
        One non-negative weight per streamer (normalised); uniform by default.
    mode : {"with_replacement", "single_active", "exhaustive"}
        ``with_replacement``: a streamer may fill several slots at once and comes back after
        it ends. ``single_active``: a streamer is active in at most one slot at a time and
        returns to the pool when its lifetime ends (pescador 1's ``revive``).
        ``exhaustive``: each streamer is activated at most once; the mux ends when all have
        been used.
    prune_empty : bool
        Drop from the pool, for the rest of the pass, a streamer that yields nothing when
        activated.
    dist : {"poisson", "binomial", "constant"}
        Distribution of lifetimes, each with mean ``rate``: ``1 + Poisson(rate - 1)``;
        pescador 3's binomial, whose spread shrinks as the new streamer's share of the active
        weight grows; or exactly ``rate``.
    random_state : None, int, numpy Generator or RandomState
        A seed makes the sequence reproducible; iterating the mux again continues from the
        state the last pass left, as in pescador.

    Examples
    --------
    >>> import headrace as hr, itertools
    >>> letters = [hr.Streamer(itertools.repeat, c) for c in "abc"]
    >>> a = hr.StochasticMux(letters, 2, rate=4, random_state=0)
    >>> b = hr.StochasticMux(letters, 2, rate=4, random_state=0)
    >>> list(a(max_items=20)) == list(b(max_items=20))  # the same seed, the same items
    True
    >>> sorted(set(a(max_items=200)))
    ['a', 'b', 'c']
    """

    def __init__(
        self,
        streamers: Sequence[Any],
        n_active: int,
        rate: float | None,
        *,
        weights: Sequence[float] | np.ndarray | None = None,
        mode: str = "with_replacement",
        prune_empty: bool = True,
        dist: str = "poisson",
        random_state: RandomState = None,
    ) -> None:
        super().__init__(streamers, random_state)
        n = len(self.streamers)
        if isinstance(n_active, bool) or not isinstance(n_active, int | np.integer):
            raise TypeError(f"n_active must be an integer >= 1, got {n_active!r}")
        if n_active < 1:
            raise ValueError(f"n_active must be >= 1 (streamers active at once), got {n_active}")
        self.n_active = int(n_active)
        self.mode = _check_mode("StochasticMux", mode, MODES)
        self.dist = _check_mode("StochasticMux", dist, DISTS, "dist")
        if rate is not None:
            if isinstance(rate, bool) or not isinstance(rate, int | float | np.number):
                raise TypeError(f"rate must be a number >= 1 or None, got {rate!r}")
            if not (math.isfinite(rate) and rate >= 1):
                raise ValueError(
                    f"rate is the mean number of items per activation and must be >= 1 (or "
                    f"None: until exhausted), got {rate}"
                )
        self.rate = None if rate is None else float(rate)
        if self.mode != "with_replacement" and self.n_active > n:
            raise ValueError(
                f"mode={self.mode!r} keeps each streamer in at most one slot, so n_active "
                f"({self.n_active}) can be at most the number of streamers ({n})"
            )
        self.prune_empty = bool(prune_empty)
        self.weights = _weights(weights, n, "StochasticMux")

    def _lifetime(self, rng: Any, p: float) -> int | None:
        rate = self.rate
        if rate is None:
            return None
        if self.dist == "constant":
            return max(1, round(rate))
        if self.dist == "binomial" and p < BINOMIAL_LIMIT:
            return 1 + int(rng.binomial(round((rate - 1) / (1 - p)), 1 - p))
        return 1 + int(rng.poisson(rate - 1))

    def _open(self) -> Iterator[Any]:
        return _stochastic(
            self.streamers,
            self.weights,
            self.n_active,
            self.mode,
            self.prune_empty,
            self._lifetime,
            self._rng,
        )


class ShuffledMux(_Mux):
    """All streamers active at once; each item comes from a streamer chosen by weight.

    A streamer that ends is restarted; one that yields nothing is dropped; the mux ends when
    every streamer has been dropped.

    Examples
    --------
    >>> import headrace as hr
    >>> mux = hr.ShuffledMux(["a", "bb"], weights=[1, 3], random_state=1)
    >>> items = list(mux(max_items=1000))
    >>> 0.2 < items.count("a") / 1000 < 0.3
    True
    """

    def __init__(
        self,
        streamers: Sequence[Any],
        *,
        weights: Sequence[float] | np.ndarray | None = None,
        random_state: RandomState = None,
    ) -> None:
        super().__init__(streamers, random_state)
        self.weights = _weights(weights, len(self.streamers), "ShuffledMux")

    def _open(self) -> Iterator[Any]:
        n = len(self.streamers)
        return _stochastic(
            self.streamers, self.weights, n, "single_active", True, _forever, self._rng
        )


def _forever(rng: Any, p: float) -> None:
    """The lifetime of a streamer that runs until exhausted."""


def _stochastic(
    streamers: list[Streamer],
    weights: np.ndarray,
    k: int,
    mode: str,
    prune: bool,
    lifetime: Lifetime,
    rng: Any,
) -> Iterator[Any]:
    """One pass of a stochastic mux: ``k`` slots, each holding an active streamer."""
    n = len(streamers)
    pool = weights.copy()  # activation weights; 0 while a streamer may not be activated
    its: list[Iterator[Any] | None] = [None] * k
    which = [-1] * k
    slot_w = [0.0] * k
    count = [0] * k
    left: list[int | None] = [None] * k
    # Streamers that came up empty since the last item; when every streamer has, and none is
    # pruned (prune=False), no item can ever come again.
    empty: set[int] = set()
    live = int(np.count_nonzero(weights))

    def activate(slot: int) -> None:
        total = float(pool.sum())
        if total <= 0:
            its[slot], which[slot], slot_w[slot] = None, -1, 0.0
            return
        cum = np.cumsum(pool)
        i = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
        if i >= n:  # a draw rounded up to the total
            i = int(np.flatnonzero(pool)[-1])
        w = float(weights[i])
        others = sum(slot_w) - slot_w[slot]
        left[slot] = lifetime(rng, w / (others + w))
        its[slot], which[slot], slot_w[slot], count[slot] = iter(streamers[i]), i, w, 0
        if mode != "with_replacement":
            pool[i] = 0.0

    def retire(slot: int, exhausted: bool) -> bool:
        """Replace the streamer in ``slot``; False when nothing can ever come again."""
        i = which[slot]
        close_iterator(its[slot])
        its[slot], slot_w[slot] = None, 0.0
        if exhausted and count[slot] == 0:
            if prune:
                pool[i] = 0.0
            else:
                empty.add(i)
                if len(empty) >= live:
                    return False
            if mode == "single_active" and not prune:
                pool[i] = weights[i]
        elif mode == "single_active":
            pool[i] = weights[i]
        activate(slot)
        return True

    for slot in range(k):
        activate(slot)
    cum = list(accumulate(slot_w))
    total = cum[-1]
    draws: list[float] = []
    pos = 0
    try:
        while total > 0:
            if pos == len(draws):
                draws, pos = rng.random(UNIFORM_BLOCK).tolist(), 0
            slot = bisect_right(cum, draws[pos] * total)
            pos += 1
            if slot >= k:  # a draw rounded up to the total: take the last weighted slot
                slot = max(s for s in range(k) if slot_w[s] > 0)
            try:
                item = next(its[slot])  # type: ignore[arg-type]
            except StopIteration:
                if not retire(slot, exhausted=True):
                    return
                cum = list(accumulate(slot_w))
                total = cum[-1]
                continue
            if empty:
                empty.clear()
            yield item
            count[slot] += 1
            remaining = left[slot]
            if remaining is not None:
                if remaining <= 1:
                    retire(slot, exhausted=False)
                    cum = list(accumulate(slot_w))
                    total = cum[-1]
                else:
                    left[slot] = remaining - 1
    finally:
        for it in its:
            close_iterator(it)


class RoundRobinMux(_Mux):
    """One item from each streamer in turn, skipping those that have ended.

    ``mode="exhaustive"`` ends when every streamer has ended; ``"cycle"`` then starts them all
    again; ``"permuted_cycle"`` starts them again in a new random order.

    Examples
    --------
    >>> import headrace as hr
    >>> "".join(hr.RoundRobinMux(["ab", "cde", "f"]))
    'acfbde'
    >>> "".join(hr.RoundRobinMux(["ab", "c"], mode="cycle")(max_items=7))
    'acbacba'
    """

    def __init__(
        self,
        streamers: Sequence[Any],
        *,
        mode: str = "exhaustive",
        random_state: RandomState = None,
    ) -> None:
        super().__init__(streamers, random_state)
        self.mode = _check_mode("RoundRobinMux", mode, ROUND_ROBIN_MODES)

    def _open(self) -> Iterator[Any]:
        return self._round_robin()

    def _round_robin(self) -> Iterator[Any]:
        order = list(range(len(self.streamers)))
        first = True
        while True:
            if self.mode == "permuted_cycle" and not first:
                order = [int(i) for i in self._rng.permutation(len(self.streamers))]
            first = False
            its = [iter(self.streamers[i]) for i in order]
            produced = False
            try:
                while its:
                    for it in list(its):
                        try:
                            item = next(it)
                        except StopIteration:
                            its.remove(it)
                            continue
                        produced = True
                        yield item
            finally:
                for it in its:
                    close_iterator(it)
            if self.mode == "exhaustive" or not produced:
                return


class ChainMux(_Mux):
    """Each streamer to its end, one after another (``itertools.chain``).

    ``mode="cycle"`` starts again from the first streamer after the last one ends.

    Examples
    --------
    >>> import headrace as hr
    >>> "".join(hr.ChainMux(["abc", "de"]))
    'abcde'
    >>> "".join(hr.ChainMux(["ab", "c"], mode="cycle")(max_items=7))
    'abcabca'
    """

    def __init__(self, streamers: Sequence[Any], *, mode: str = "exhaustive") -> None:
        super().__init__(streamers, None)
        self.mode = _check_mode("ChainMux", mode, CHAIN_MODES)

    def _open(self) -> Iterator[Any]:
        return self._chain()

    def _chain(self) -> Iterator[Any]:
        while True:
            produced = False
            for streamer in self.streamers:
                it = iter(streamer)
                try:
                    for item in it:
                        produced = True
                        yield item
                finally:
                    close_iterator(it)
            if self.mode == "exhaustive" or not produced:
                return
