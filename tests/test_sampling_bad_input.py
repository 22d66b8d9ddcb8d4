"""Bad input to the sampling API: each a clear error naming the problem (issue 5)."""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest

import headrace as hr

MUXES = {
    "StochasticMux": lambda pool, **kw: hr.StochasticMux(pool, 2, 4, **kw),
    "ShuffledMux": lambda pool, **kw: hr.ShuffledMux(pool, **kw),
    "RoundRobinMux": lambda pool, **kw: hr.RoundRobinMux(pool),
    "ChainMux": lambda pool, **kw: hr.ChainMux(pool),
}


@pytest.mark.parametrize("name", sorted(MUXES))
def test_an_empty_pool(name: str) -> None:
    with pytest.raises(ValueError, match=f"{name} needs at least one streamer"):
        MUXES[name]([])


@pytest.mark.parametrize("name", sorted(MUXES))
def test_a_pool_that_is_not_a_list(name: str) -> None:
    with pytest.raises(TypeError, match="list of streamers"):
        MUXES[name](hr.Streamer([1]))
    with pytest.raises(TypeError, match=r"streamers\[1\] must be a Streamer or an iterable"):
        MUXES[name]([[1], 5])


@pytest.mark.parametrize("k", [0, -1])
def test_n_active_below_one(k: int) -> None:
    with pytest.raises(ValueError, match="n_active must be >= 1"):
        hr.StochasticMux([[1]], k, 4)


def test_n_active_of_the_wrong_type() -> None:
    with pytest.raises(TypeError, match="n_active must be an integer"):
        hr.StochasticMux([[1]], 1.5, 4)


def test_n_active_above_the_pool_without_replacement() -> None:
    with pytest.raises(ValueError, match=r"n_active \(3\) can be at most the number"):
        hr.StochasticMux([[1], [2]], 3, 4, mode="single_active")


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ([1.0], "weights has 1 entries for 2 streamers"),
        ([1.0, 2.0, 3.0], "weights has 3 entries for 2 streamers"),
        ([1.0, -0.5], r"weights must be >= 0, but weights\[1\] is -0.5"),
        ([0.0, 0.0], "weights sum to zero"),
        ([1.0, float("nan")], "must be finite"),
        ([[1.0, 2.0]], "weights has 2 entries"),
    ],
)
@pytest.mark.parametrize("name", ["StochasticMux", "ShuffledMux"])
def test_bad_weights(name: str, weights: list[float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MUXES[name]([[1], [2]], weights=weights)


def test_weights_that_are_not_numbers() -> None:
    with pytest.raises(TypeError, match="weights must be a list of numbers"):
        hr.ShuffledMux([[1], [2]], weights=["a", "b"])


@pytest.mark.parametrize(("rate", "error"), [(0.5, ValueError), (0, ValueError), ("2", TypeError)])
def test_bad_rate(rate: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="rate"):
        hr.StochasticMux([[1]], 1, rate)


def test_bad_modes() -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        hr.StochasticMux([[1]], 1, 4, mode="without_replacement")
    with pytest.raises(ValueError, match="dist must be one of"):
        hr.StochasticMux([[1]], 1, 4, dist="gamma")
    with pytest.raises(ValueError, match="mode must be one of"):
        hr.RoundRobinMux([[1]], mode="shuffle")
    with pytest.raises(ValueError, match="mode must be one of"):
        hr.ChainMux([[1]], mode="with_replacement")


def test_bad_random_state() -> None:
    with pytest.raises(TypeError, match="random_state must be"):
        hr.StochasticMux([[1]], 1, 4, random_state="seed")
    with pytest.raises(ValueError, match="non-negative seed"):
        hr.ShuffledMux([[1]], random_state=-3)


def test_a_streamer_over_a_non_iterable() -> None:
    with pytest.raises(TypeError, match="Streamer needs a generator function or an iterable"):
        hr.Streamer(5)
    with pytest.raises(TypeError, match="not callable"):
        hr.Streamer([1, 2], 3)


def test_a_function_that_returns_no_iterable() -> None:
    def not_a_generator():
        return 5

    with pytest.raises(TypeError, match="returned int, not an iterable"):
        list(hr.Streamer(not_a_generator))


def test_bad_max_items() -> None:
    s = hr.Streamer([1])
    with pytest.raises(ValueError, match="max_items must be None or an integer >= 0"):
        s.iterate(-1)
    with pytest.raises(TypeError, match="max_items"):
        s(max_items=2.5)


def test_a_key_missing_from_an_item_in_tuples() -> None:
    s = hr.Streamer([{"X": 1, "Y": 2}, {"X": 3}])
    with pytest.raises(KeyError, match=r"key 'Y' is missing from an item that has keys \['X'\]"):
        list(s.tuples("X", "Y"))
    with pytest.raises(ValueError, match="at least one key"):
        s.tuples()
    with pytest.raises(TypeError, match="items indexed by key"):
        list(hr.Streamer([5]).tuples("X"))
    with pytest.raises(KeyError, match="'Z' is missing"):
        list(s.keras_tuples("X", "Z"))


def test_mismatched_leading_dimensions_in_a_buffered_batch() -> None:
    items = [{"X": np.zeros((3, 2)), "Y": np.zeros(2)}]
    with pytest.raises(ValueError, match=r"equal row counts in a dict batch, got \[2, 3\]"):
        list(hr.Streamer(items).rebatch(4))
    with pytest.raises(ValueError, match="equal row counts"):
        hr.from_iterable(items).rebatch(4).collect()


def test_bad_buffer_sizes() -> None:
    with pytest.raises(ValueError, match="rows must be >= 1"):
        hr.Streamer([1]).rebatch(0)
    with pytest.raises(TypeError, match="size must be an integer"):
        hr.Streamer([1]).batch(2.0)


def test_samplers_reject_bad_arguments_and_files(tmp_path) -> None:
    path = tmp_path / "a.npz"
    np.savez(path, X=np.zeros((5, 2)), Y=np.zeros(4))
    with pytest.raises(ValueError, match="rows must be >= 1"):
        hr.sample_npz(path, 0)
    with pytest.raises(ValueError, match="different numbers of rows"):
        next(iter(hr.sample_npz(path, 2)))
    with pytest.raises(ValueError, match="has 5 rows, fewer than rows=8"):
        next(iter(hr.sample_npz(path, 8, keys=["X"])))
    with pytest.raises(KeyError, match="no array named 'Z'"):
        next(iter(hr.sample_npz(path, 2, keys=["Z"])))
    with pytest.raises(TypeError, match="non-empty dict"):
        hr.sample_npy([str(path)], 2)


def test_nothing_hangs_on_a_pool_of_empty_streamers_cycled() -> None:
    mux = hr.StochasticMux([hr.Streamer([])] * 2, 1, 3, prune_empty=False, random_state=0)
    assert list(itertools.islice(mux.cycle(), 5)) == []


def test_zmq_streamer_without_pyzmq_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "zmq", None)  # import zmq raises ImportError
    with pytest.raises(ImportError, match=r"pip install \"headrace\[zmq\]\""):
        hr.ZMQStreamer([1]).iterate()


def test_to_torch_without_torch_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from headrace import _adapters

    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setattr(_adapters, "_made", {})
    with pytest.raises(ImportError, match=r"pip install \"headrace\[torch\]\""):
        hr.from_iterable([1]).to_torch()
