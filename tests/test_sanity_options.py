"""Options that cannot be honoured are refused, and ones that would quietly hurt are warned
about, each with a message that says what to do (issue 15, finding 10)."""

from __future__ import annotations

import os
import sys
import threading
import warnings
from typing import Any

import cloudpickle
import pytest

import headrace as hr
from headrace._stages import MAX_WORKERS, PROCESSES_PER_CORE

# Process workers get this module's functions by value (a worker cannot import a test module).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_ten_thousand_workers_are_refused_when_the_stage_is_built() -> None:
    with pytest.raises(ValueError, match=r"workers=10000 is more than one stage may have"):
        hr.from_iterable(range(3)).map(abs, workers=10_000)
    hr.from_iterable(range(3)).map(abs, workers=MAX_WORKERS)  # the bound itself is accepted


def test_many_more_processes_than_cores_warn_at_the_callers_line() -> None:
    many = PROCESSES_PER_CORE * (os.cpu_count() or 1) + 1
    with pytest.warns(RuntimeWarning, match=r"processes beyond the cores") as caught:
        hr.from_iterable(range(3)).map(abs, workers=many, backend="process")
    assert caught[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hr.from_iterable(range(3)).map(abs, workers=many, backend="thread")  # threads: no warning


def test_a_memory_budget_larger_than_dev_shm_is_refused() -> None:
    with pytest.raises(ValueError, match=r"memory='1TB' .* cannot be honoured"):
        hr.from_iterable(range(3)).map(abs).collect(memory="1TB")


def test_a_tiny_memory_budget_warns_and_still_runs() -> None:
    with pytest.warns(RuntimeWarning, match=r"memory='1MB' is so small") as caught:
        assert hr.from_iterable(range(3)).map(abs).collect(memory="1MB") == [0, 1, 2]
    assert caught[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hr.from_iterable(range(3)).map(abs).collect(memory="256MiB") == [0, 1, 2]


# --- two threads reading one run -----------------------------------------------------------


@pytest.mark.parametrize("backend", ["inline", "thread", "process"])
def test_two_threads_reading_one_run_share_its_items(backend: str) -> None:
    """Each item goes to exactly one reader, both see the end, neither gets a ClosedError."""
    n = 50_000
    workers = 1 if backend == "inline" else 2
    run = hr.from_iterable(range(n)).map(abs, workers=workers, backend=backend).open()
    got: list[list[int]] = [[], []]
    errors: list[BaseException] = []

    def read(mine: list[int]) -> None:
        try:
            while True:
                mine.append(next(run))
        except StopIteration:
            pass
        except BaseException as exc:
            errors.append(exc)

    with run:
        readers = [threading.Thread(target=read, args=(got[i],)) for i in range(2)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(30)
    assert not errors, errors
    assert sorted(got[0] + got[1]) == list(range(n))
    with pytest.raises(StopIteration):  # the end, again, not a ClosedError
        next(run)


def test_two_threads_each_with_a_for_loop_share_the_items() -> None:
    n = 20_000
    run = hr.from_iterable(range(n)).map(abs, workers=2, backend="thread").open()
    got: list[list[int]] = [[], []]
    readers = [threading.Thread(target=lambda mine=mine: mine.extend(run)) for mine in got]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(30)
    run.close()
    assert sorted(got[0] + got[1]) == list(range(n))


def test_every_reader_gets_the_runs_error() -> None:
    def fail_late(x: int) -> int:
        if x == 5_000:
            raise ValueError("late")
        return x

    run = hr.from_iterable(range(10_000)).map(fail_late, workers=2, backend="thread").open()
    caught: list[BaseException] = []

    def read() -> None:
        try:
            for _ in run:
                pass
        except BaseException as exc:
            caught.append(exc)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(30)
    run.close()
    assert [type(e) for e in caught] == [ValueError, ValueError]


def test_reading_a_run_closed_before_its_end_is_an_error() -> None:
    run = hr.from_iterable(range(10**6)).map(abs, backend="thread").open()
    next(run)
    run.close()
    with pytest.raises(hr.ClosedError):
        next(run)


# --- what cannot be pickled ------------------------------------------------------------------


def lock_at_3(x: int) -> Any:
    return threading.Lock() if x == 3 else x


def test_an_unpicklable_result_is_a_serialization_error_naming_stage_and_item() -> None:
    stream = hr.from_iterable(range(8)).map(lock_at_3, workers=2, backend="process", name="f")
    with pytest.raises(hr.SerializationError) as info:
        stream.collect()
    error = info.value
    assert (error.stage, error.index) == ("f", 3)
    assert "stage 'f': the result of item 3 could not be pickled" in str(error)
    assert isinstance(error.__cause__, TypeError) and "lock" in str(error.__cause__)
    assert isinstance(error, hr.HeadraceError)


def test_an_unpicklable_result_is_skipped_under_skip() -> None:
    stream = hr.from_iterable(range(8)).map(
        lock_at_3, workers=2, backend="process", name="f", on_error="skip"
    )
    with stream.open() as run:
        assert list(run) == [0, 1, 2, 4, 5, 6, 7]
    (record,) = run.report().errors
    assert (record.stage, record.index, record.type) == ("f", 3, "SerializationError")
    assert "could not be pickled" in record.message


def lock_third(items: Any) -> Any:
    for i, x in enumerate(items):
        yield threading.Lock() if i == 2 else x


def test_a_transform_s_unpicklable_output_is_a_serialization_error_naming_the_stage() -> None:
    stream = hr.from_iterable(range(8)).transform(lock_third, backend="process", name="w")
    with pytest.raises(hr.SerializationError) as info:
        stream.collect()
    error = info.value
    assert error.stage == "w"
    assert "stage 'w': an output could not be pickled (after item 2)" in str(error)
    assert isinstance(error.__cause__, TypeError) and "lock" in str(error.__cause__)


def test_an_unpicklable_item_is_a_serialization_error() -> None:
    items = [1, 2, threading.Lock(), 4]
    stream = hr.from_iterable(items).map(repr, workers=2, backend="process", name="show")
    with pytest.raises(hr.SerializationError, match=r"stage 'show': item 2 could not be pickled"):
        stream.collect()
