"""Options that cannot be honoured are refused, and ones that would quietly hurt are warned
about, each with a message that says what to do (issue 15, finding 10)."""

from __future__ import annotations

import os
import warnings

import pytest

import headrace as hr
from headrace._stages import MAX_WORKERS, PROCESSES_PER_CORE


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
