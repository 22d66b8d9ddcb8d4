"""The muxes follow their documented distributions (fixed seeds, loose bounds).

Each test draws enough items that its bound is several standard deviations wide: with a
fixed seed the result is deterministic, and a bug that biases the sampling still fails.
"""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

import headrace as hr


def tagged(sid):
    for i in itertools.count():
        yield (sid, i)


def pool(n):
    return [hr.Streamer(tagged, sid) for sid in range(n)]


def shares(items, n):
    counts = Counter(sid for sid, _ in items)
    return np.array([counts[i] for i in range(n)]) / len(items)


def lifetimes(items):
    """Lengths of the runs of one activation (k=1: a new activation restarts at i=0)."""
    runs, length = [], 0
    for _, i in items:
        if i == 0 and length:
            runs.append(length)
            length = 0
        length += 1
    return np.array(runs)  # the last, unfinished run is left out


@pytest.mark.parametrize("mode", ["with_replacement", "single_active"])
def test_streamer_shares_follow_the_weights(mode: str) -> None:
    weights = np.array([1.0, 2.0, 3.0, 4.0, 0.0, 6.0])
    mux = hr.StochasticMux(pool(6), 2, 16, weights=weights, mode=mode, random_state=11)
    got = shares(list(mux(max_items=100_000)), 6)
    if mode == "with_replacement":
        # Each activation yields ~rate items whatever its weight, and activations follow the
        # weights, so the shares do too (6,250 activations: sd of a share < 0.006).
        np.testing.assert_allclose(got, weights / weights.sum(), atol=0.03)
    else:
        # A streamer cannot be drawn while it is active, which flattens the shares a little;
        # they still rank by weight and the zero weight never shows.
        assert got[4] == 0 and (np.diff(got[[0, 1, 2, 3, 5]]) > 0).all()


def test_items_within_the_active_set_follow_the_weights() -> None:
    """All streamers active and never retired: each item picks a slot by its weight."""
    weights = np.array([1.0, 1.0, 2.0, 4.0])
    mux = hr.StochasticMux(pool(4), 4, None, weights=weights, mode="single_active", random_state=5)
    got = shares(list(mux(max_items=40_000)), 4)
    np.testing.assert_allclose(got, weights / weights.sum(), atol=0.015)  # sd < 0.0025


def test_shuffled_mux_shares_follow_the_weights() -> None:
    weights = np.array([5.0, 3.0, 2.0])
    got = shares(list(hr.ShuffledMux(pool(3), weights=weights, random_state=8)(30_000)), 3)
    np.testing.assert_allclose(got, weights / weights.sum(), atol=0.015)


@pytest.mark.parametrize("rate", [4, 20, 64])
def test_poisson_lifetimes_have_the_rate_as_mean_and_rate_minus_one_as_variance(
    rate: int,
) -> None:
    mux = hr.StochasticMux(pool(5), 1, rate, dist="poisson", random_state=rate)
    runs = lifetimes(mux(max_items=3000 * rate))
    assert len(runs) > 2500
    assert runs.min() >= 1
    assert abs(runs.mean() - rate) < 0.05 * rate  # sd of the mean: sqrt(rate / 3000)
    assert abs(runs.var() - (rate - 1)) < 0.2 * rate + 0.5


def test_constant_lifetimes_are_exactly_the_rate() -> None:
    runs = lifetimes(hr.StochasticMux(pool(3), 1, 7, dist="constant", random_state=1)(7000))
    assert set(runs.tolist()) == {7}


def test_binomial_lifetimes_have_the_rate_as_mean() -> None:
    mux = hr.StochasticMux(pool(6), 1, 16, dist="binomial", random_state=3)
    runs = lifetimes(mux(max_items=64_000))
    assert abs(runs.mean() - 16) < 0.8


def test_lifetimes_with_several_active_streamers() -> None:
    """With k=3 every activation still yields ~rate items: count the items per activation."""
    rate = 30
    mux = hr.StochasticMux(pool(10), 3, rate, mode="single_active", random_state=21)
    per_activation: Counter[tuple[int, int]] = Counter()
    activation: dict[int, int] = {}
    for sid, i in mux(max_items=150_000):
        if i == 0:
            activation[sid] = activation.get(sid, -1) + 1
        per_activation[(sid, activation[sid])] += 1
    finished = [n for (sid, a), n in per_activation.items() if a < activation[sid]]
    assert len(finished) > 3000
    assert abs(np.mean(finished) - rate) < 0.05 * rate


def test_activation_frequencies_follow_the_weights_in_exhaustive_epochs() -> None:
    """Exhaustive mode: over many epochs the first streamer picked follows the weights."""
    weights = np.array([1.0, 3.0])
    firsts = Counter()
    mux = hr.StochasticMux(pool(2), 1, 2, weights=weights, mode="exhaustive", random_state=4)
    for _ in range(4000):
        firsts[next(iter(mux))[0]] += 1
    assert abs(firsts[1] / 4000 - 0.75) < 0.03  # sd 0.007


def test_compat_mux_lam_is_the_mean_lifetime() -> None:
    pescador = pytest.importorskip("headrace.compat.pescador")
    mux = pescador.Mux([pescador.Streamer(tagged, s) for s in range(4)], k=1, lam=32)
    runs = lifetimes(mux(max_batches=32 * 2000))
    assert abs(runs.mean() - 32) < 1.6


def test_same_lifetimes_as_pescador() -> None:
    """Against pescador 3 itself (when installed): the same Poisson lifetimes.

    (Not the weights: pescador 3 activates streamers uniformly and uses the weights only to
    interleave the active ones, so its shares stay near uniform whatever the weights; headrace
    activates by weight, as the seed document describes ``pool_weights``.)
    """
    pescador = pytest.importorskip("pescador")
    theirs = pescador.StochasticMux(
        [pescador.Streamer(tagged, s) for s in range(3)], 1, 12, dist="poisson", random_state=1
    )
    ours = hr.StochasticMux(pool(3), 1, 12, dist="poisson", random_state=1)
    a = lifetimes(itertools.islice(theirs, 36_000))
    b = lifetimes(ours(max_items=36_000))
    assert abs(a.mean() - b.mean()) < 0.6 and abs(a.var() - b.var()) < 2.5
