"""The mux family: modes, pruning, nesting, exact reproducibility under a fixed random_state."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

import headrace as hr


def tagged(sid, n=None):
    """Items (sid, i), i counting from 0 in each activation; infinite when n is None."""
    for i in itertools.count() if n is None else range(n):
        yield (sid, i)


def pool(n, length=None):
    return [hr.Streamer(tagged, sid, length) for sid in range(n)]


def no_stream_in_two_slots(items) -> bool:
    """True if each streamer's counter only ever goes up by one or restarts at 0."""
    last: dict[int, int] = {}
    for sid, i in items:
        if i != 0 and last.get(sid) != i - 1:
            return False
        last[sid] = i
    return True


# --- StochasticMux ------------------------------------------------------------------------


def test_exhaustive_with_no_rate_yields_every_item_exactly_once() -> None:
    mux = hr.StochasticMux(pool(6, 25), 3, None, mode="exhaustive", random_state=1)
    items = list(mux)
    assert Counter(items) == Counter((sid, i) for sid in range(6) for i in range(25))


def test_exhaustive_activates_each_streamer_at_most_once() -> None:
    mux = hr.StochasticMux(pool(8), 3, 10, mode="exhaustive", random_state=2)
    items = list(mux)  # ends: 8 activations of ~10 items each
    starts = Counter(sid for sid, i in items if i == 0)
    assert set(starts) == set(range(8)) and set(starts.values()) == {1}
    assert no_stream_in_two_slots(items)


def test_single_active_never_puts_one_streamer_in_two_slots() -> None:
    mux = hr.StochasticMux(pool(4), 3, 5, mode="single_active", random_state=3)
    items = list(mux(max_items=5000))
    assert no_stream_in_two_slots(items)
    assert {sid for sid, _ in items} == set(range(4))  # streamers come back after retiring


def test_with_replacement_may_put_one_streamer_in_two_slots() -> None:
    """The property above is not trivially true: with replacement it fails."""
    mux = hr.StochasticMux(pool(2), 3, 50, random_state=3)
    assert not no_stream_in_two_slots(mux(max_items=5000))


def test_finite_streamers_restart_with_replacement() -> None:
    mux = hr.StochasticMux(pool(2, 3), 1, None, random_state=0)
    items = list(mux(max_items=30))
    assert len(items) == 30 and sum(i == 0 for _, i in items) >= 10


def test_empty_streamers_are_pruned() -> None:
    calls = Counter()

    def maybe_empty(sid):
        calls[sid] += 1
        if sid < 2:
            return
        yield from itertools.count()

    streamers = [hr.Streamer(maybe_empty, sid) for sid in range(3)]
    items = list(hr.StochasticMux(streamers, 2, 4, random_state=0)(max_items=2000))
    assert len(items) == 2000
    assert calls[0] <= 2 and calls[1] <= 2  # at most once per slot, then never again
    assert calls[2] > 100


def test_a_pool_of_empty_streamers_ends_with_or_without_pruning() -> None:
    empties = [hr.Streamer([]) for _ in range(3)]
    assert list(hr.StochasticMux(empties, 2, 4, random_state=0)) == []
    assert list(hr.StochasticMux(empties, 2, 4, prune_empty=False, random_state=0)) == []
    assert list(hr.StochasticMux(empties, 2, None, mode="single_active", prune_empty=False)) == []


def test_zero_weight_streamers_never_appear() -> None:
    mux = hr.StochasticMux(pool(3), 2, 8, weights=[1, 0, 1], random_state=4)
    assert {sid for sid, _ in mux(max_items=3000)} == {0, 2}


def test_muxes_nest() -> None:
    inner_a = hr.ShuffledMux([["a"], ["b"]], random_state=1)
    inner_c = hr.RoundRobinMux(["c", "d"], mode="cycle")
    outer = hr.StochasticMux([inner_a, inner_c], 2, 3, random_state=2)
    assert set(outer(max_items=500)) == {"a", "b", "c", "d"}
    chained = hr.ChainMux([hr.ChainMux(["ab"]), hr.RoundRobinMux(["cd", "e"])])
    assert "".join(chained) == "abced"


def test_a_mux_feeds_a_parallel_pipeline() -> None:
    def build():
        return hr.StochasticMux(pool(5), 2, 6, random_state=9)

    expected = [(sid * 10, i) for sid, i in build()(max_items=300)]
    stream = hr.from_iterable(build().iterate(300)).map(lambda t: (t[0] * 10, t[1]), workers=3)
    assert stream.collect() == expected


# --- exact reproducibility ----------------------------------------------------------------


def make_all(seed):
    return {
        "stochastic": hr.StochasticMux(pool(6), 3, 7, random_state=seed),
        "binomial": hr.StochasticMux(pool(6), 3, 7, dist="binomial", random_state=seed),
        "single": hr.StochasticMux(pool(6), 2, 7, mode="single_active", random_state=seed),
        "weighted": hr.StochasticMux(pool(6), 3, 7, weights=range(1, 7), random_state=seed),
        "shuffled": hr.ShuffledMux(pool(4, 5), weights=[1, 2, 3, 4], random_state=seed),
        "permuted": hr.RoundRobinMux(pool(4, 3), mode="permuted_cycle", random_state=seed),
        "nested": hr.StochasticMux(
            [
                hr.StochasticMux(pool(3), 2, 5, random_state=seed + 1),
                hr.ShuffledMux(pool(2), random_state=seed + 2),
            ],
            1,
            20,
            random_state=seed,
        ),
    }


@pytest.mark.parametrize("kind", sorted(make_all(0)))
def test_the_same_seed_gives_the_same_items(kind: str) -> None:
    a, b = make_all(123)[kind], make_all(123)[kind]
    first = list(a(max_items=2000))
    assert first == list(b(max_items=2000))
    # Iterating again continues from the generator's state (as pescador does): both agree.
    assert list(a(max_items=500)) == list(b(max_items=500))


@pytest.mark.parametrize("kind", ["stochastic", "shuffled", "permuted", "nested"])
def test_another_seed_gives_other_items(kind: str) -> None:
    a, b = make_all(1)[kind], make_all(2)[kind]
    assert list(a(max_items=2000)) != list(b(max_items=2000))


def test_a_numpy_generator_or_random_state_is_accepted() -> None:
    a = hr.StochasticMux(pool(4), 2, 5, random_state=np.random.default_rng(7))
    b = hr.StochasticMux(pool(4), 2, 5, random_state=np.random.default_rng(7))
    assert list(a(max_items=300)) == list(b(max_items=300))
    c = hr.StochasticMux(pool(4), 2, 5, random_state=np.random.RandomState(7))
    d = hr.StochasticMux(pool(4), 2, 5, random_state=np.random.RandomState(7))
    assert list(c(max_items=300)) == list(d(max_items=300))


# --- the deterministic muxes ------------------------------------------------------------------


def test_round_robin_modes() -> None:
    assert "".join(hr.RoundRobinMux(["ab", "cde", "f"])) == "acfbde"
    assert "".join(hr.RoundRobinMux(["ab", "c"], mode="cycle")(max_items=9)) == "acbacbacb"
    got = "".join(hr.RoundRobinMux(["a", "b", "c"], mode="permuted_cycle", random_state=0)(30))
    assert all(sorted(got[i : i + 3]) == ["a", "b", "c"] for i in range(0, 30, 3))
    assert len({got[i : i + 3] for i in range(0, 30, 3)}) > 1  # the order changes per round
    assert list(hr.RoundRobinMux([[], []], mode="cycle")) == []


def test_chain_modes() -> None:
    assert "".join(hr.ChainMux(["abc", "", "de"])) == "abcde"
    assert "".join(hr.ChainMux(["ab", "c"], mode="cycle")(max_items=8)) == "abcabcab"
    assert list(hr.ChainMux([[], []], mode="cycle")) == []


def test_shuffled_mux_restarts_streamers_and_drops_empty_ones() -> None:
    mux = hr.ShuffledMux([hr.Streamer(tagged, 0, 2), hr.Streamer([])], random_state=0)
    items = list(mux(max_items=10))
    assert items == [(0, i % 2) for i in range(10)]
