"""A process worker keeps the memory it frees during a job (the next item reuses its pages
instead of faulting fresh ones in) and gives it back when the job ends; the program that runs
the pipeline is never tuned."""

from __future__ import annotations

import platform
import resource
import sys
from typing import Any

import numpy as np
import pytest

import headrace as hr
from headrace._memory import memory_holders, memory_kept

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="the allocator is tuned on glibc only",
)


def faults_of_an_item(_: Any) -> tuple[int, int]:
    """What an image-sized item costs: 2 MiB arrays made and freed (the input's float copy, a
    temporary); the page faults that took in this thread."""
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    image = np.ones(2**18)  # 2 MiB
    image = image * 2.0 + 1.0
    assert image[0] == 3.0
    del image
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before, memory_holders()


@glibc
def test_a_process_worker_reuses_freed_memory_from_item_to_item() -> None:
    got = hr.from_iterable(range(40)).map(faults_of_an_item, workers=1, backend="process")
    results = got.collect()
    assert {holders for _, holders in results} == {1}
    # The first items fault their pages in (about 1,000 for two 2 MiB arrays); later ones reuse
    # them. With glibc's defaults every item faults about as many (its pages are trimmed or
    # unmapped once freed).
    later = sorted(faults for faults, _ in results[10:])
    assert later[len(later) // 2] < 100, later


def test_the_program_running_the_pipeline_is_not_tuned() -> None:
    results = (
        hr.from_iterable(range(8)).map(faults_of_an_item, workers=2, backend="thread").collect()
    )
    assert {holders for _, holders in results} == {0}
    hr.from_iterable(range(8)).map(faults_of_an_item, workers=2, backend="process").collect()
    assert not memory_kept()
