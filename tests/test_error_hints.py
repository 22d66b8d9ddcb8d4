"""Mistakes a new user makes get an error that names the public function and the fix."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import headrace as hr


def src() -> hr.Stream:
    return hr.from_iterable(range(3))


@pytest.mark.parametrize("method", ["map", "filter", "flat_map", "transform", "sink"])
def test_a_misspelt_stage_option_names_the_method_and_the_closest_option(method: str) -> None:
    with pytest.raises(TypeError) as info:
        getattr(src(), method)(abs, worker=2)
    text = str(info.value)
    assert f"Stream.{method}()" in text
    assert "'worker'" in text and "did you mean 'workers'?" in text
    assert "StageOptions" not in text


def test_a_misspelt_option_of_route() -> None:
    with pytest.raises(TypeError, match=r"Stream\.route\(\).*did you mean 'ordered'"):
        src().route(lambda x: 0, 2, orderd=False)


def test_an_option_with_no_close_match_lists_the_options() -> None:
    with pytest.raises(TypeError, match="the stage options are: workers, backend"):
        src().map(abs, colour="red")


@pytest.mark.parametrize(
    ("call", "where"),
    [
        (lambda s, kw: s.collect(**kw), "Stream.collect()"),
        (lambda s, kw: s.run(**kw), "Stream.run()"),
        (lambda s, kw: s.open(**kw), "Stream.open()"),
        (lambda s, kw: hr.run(s, **kw), "hr.run()"),
        (lambda s, kw: s.to_torch(**kw), "Stream.to_torch()"),
    ],
)
def test_a_misspelt_run_option_names_the_function_and_the_closest_option(
    call: Any, where: str
) -> None:
    with pytest.raises(TypeError) as info:
        call(src(), {"progres": True})
    text = str(info.value)
    assert where in text and "did you mean 'progress'?" in text
    assert "Run.__init__" not in text


def test_run_options_still_work() -> None:
    assert src().collect(seed=1, progress=False) == [0, 1, 2]


def numbers(n: int) -> Iterator[int]:
    yield from range(n)


def test_from_iterable_of_a_generator_function_suggests_calling_it() -> None:
    with pytest.raises(TypeError) as info:
        hr.from_iterable(numbers)  # type: ignore[arg-type]
    text = str(info.value)
    assert "'numbers'" in text
    assert "numbers(...)" in text and "hr.Streamer(numbers" in text


def test_from_iterable_of_a_plain_object_says_it_is_not_iterable() -> None:
    with pytest.raises(TypeError, match="iterable must be iterable, got int"):
        hr.from_iterable(42)  # type: ignore[arg-type]
