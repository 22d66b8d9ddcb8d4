"""A file job's worker processes reuse the memory they freed from one file to the next, give it
back when the job ends, and never tune the allocator of the program that runs the job."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import headrace as hr
from headrace._memory import memory_holders, memory_kept

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="the allocator is tuned on glibc only",
)

#: 16 MiB arrays: 4,096 pages each, allocated twice per file (read, then x10).
ELEMENTS = 2**21


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt


def counting_read(path: str, **control: Any) -> hr.FileStep:
    before = _faults()
    data = np.load(path) * 10  # what a file costs: its data read, then a processed copy
    return hr.FileStep(
        data, meta={"faults": _faults() - before, "pid": os.getpid(), "kept": memory_kept()}
    )


def save(data: Any, path: str, **control: Any) -> None:
    np.save(path, data)


def holders_here(_: Any) -> tuple[int, int]:
    return os.getpid(), memory_holders()


@pytest.fixture
def inputs(tmp_path: Path) -> list[str]:
    paths = []
    for i in range(4):
        paths.append(str(tmp_path / f"in{i}.npy"))
        np.save(paths[-1], np.full(ELEMENTS, float(i)))
    return paths


@glibc
def test_a_process_worker_reuses_the_memory_of_its_earlier_files(
    inputs: list[str], tmp_path: Path
) -> None:
    results = hr.FileJob(None, read=counting_read, write=save, workers=1).run(
        inputs, tmp_path / "out"
    )
    assert [r.status for r in results] == ["written"] * 4
    assert all(r.meta["kept"] for r in results)
    # The first file faults its pages in (thousands); the next ones reuse them. Without the
    # tuning every file faults about as many as the first (glibc trims or unmaps them).
    later = [r.meta["faults"] for r in results[1:]]
    assert max(later) < 200, later
    out = np.load(tmp_path / "out" / "in3.npy", mmap_mode="r")
    assert out[0] == out[-1] == 30.0


@glibc
def test_the_worker_gives_the_memory_back_when_its_job_ends(
    inputs: list[str], tmp_path: Path
) -> None:
    results = hr.FileJob(None, read=counting_read, write=save, workers=2).run(
        inputs, tmp_path / "out"
    )
    job_pids = {r.meta["pid"] for r in results}
    later = hr.from_iterable(range(4)).map(holders_here, workers=2, backend="process").collect()
    if not job_pids & {pid for pid, _ in later}:
        pytest.skip("the later stage started new workers instead of reusing the job's")
    # The later job keeps its own freed memory (every process job does); the file job's hold
    # ended with it.
    assert {holders for _, holders in later} == {1}


def test_a_thread_job_leaves_the_program_allocator_alone(inputs: list[str], tmp_path: Path) -> None:
    results = hr.FileJob(None, read=counting_read, write=save, backend="thread", workers=2).run(
        inputs, tmp_path / "out"
    )
    assert [r.status for r in results] == ["written"] * 4
    assert not any(r.meta["kept"] for r in results)
    assert not memory_kept()


@glibc
def test_memory_is_returned_when_the_last_holder_lets_go() -> None:
    # In a child interpreter: the test process's own allocator stays as it is.
    code = textwrap.dedent(
        """
        import numpy as np
        from headrace._memory import give_back_memory, keep_freed_memory, memory_kept

        def rss_mib():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * 4096 // 2**20

        assert keep_freed_memory() and keep_freed_memory()
        a = np.ones(2**25)  # 256 MiB, freed at once but kept
        del a
        kept = rss_mib()
        give_back_memory()
        assert memory_kept()  # one holder left
        give_back_memory()
        assert not memory_kept()
        print(kept - rss_mib())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 200  # MiB handed back by the last give_back_memory
