"""What a workload is: its cases (one per system and configuration), metrics and sizes.

Imported by the parent (to plan and report) and by each child interpreter (to run one case), so
it imports no peer: every peer is imported inside the function that uses it.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: The headrace backend the workloads use; the harness sets it for each child. "process" is the
#: subject of the suite; "thread" is for trying the harness while the process backend is
#: unavailable.
BACKEND_ENV = "HEADRACE_BENCH_BACKEND"
DEFAULT_BACKEND = "process"
#: Set to "1" by `headrace bench --cold`: cases time their first job, as a one-shot script
#: pays it (start-method servers, worker start, imports, first page faults), without warm-up.
COLD_ENV = "HEADRACE_BENCH_COLD"

MiB = 1 << 20
#: Decimal gigabyte, as in every GB/s figure here.
GB = 1e9

Params = dict[str, Any]
Result = dict[str, Any]


def backend() -> str:
    """The headrace backend this child measures."""
    return os.environ.get(BACKEND_ENV, DEFAULT_BACKEND)


@dataclass(frozen=True)
class Metric:
    """One figure of a workload, computed from a child's result."""

    key: str
    label: str  # column header, unit included, e.g. "M items/s"
    higher_is_better: bool
    scale: float = 1.0  # shown value = value * scale
    digits: int = 2

    def show(self, value: float | None) -> str:
        if value is None:
            return "-"
        return f"{value * self.scale:,.{self.digits}f}"


@dataclass(frozen=True)
class Case:
    """One system in one configuration, on one workload."""

    key: str  # unique within the workload, e.g. "pool-tuned"
    system: str  # e.g. "multiprocessing.Pool"
    settings: str  # shown in the settings column
    run: Callable[[Params], Result]  # runs in the child; returns the raw measurement
    needs: tuple[str, ...] = ()  # modules to import first; a missing one skips the case
    kind: str = "peer"  # "headrace", "peer" or "reference" (not a peer: serial, ...)
    #: Multiplies the workload's sizes, for a system far too slow for the full job (noted).
    scale: float = 1.0
    #: "ray" for the rows on a local Ray (headrace's Ray engine, Ray Data): run with the peers.
    engine: str = "local"


@dataclass(frozen=True)
class Workload:
    name: str  # "W1"
    title: str  # one line: what it measures
    module: str  # benchmarks.workloads.<module> holds it (the child imports it by name)
    metrics: tuple[Metric, ...]
    full: Params
    quick: Params
    cases: tuple[Case, ...]
    figures: Callable[[Result, Params], dict[str, float]]
    memory: bool = True  # sample peak PSS in a separate run
    #: Called with the rows after all runs, for figures relative to another row (W3's speedup).
    finish: Callable[[list[dict[str, Any]], Params], None] | None = None
    notes: tuple[str, ...] = field(default=())

    def case(self, key: str) -> Case:
        for case in self.cases:
            if case.key == key:
                return case
        raise KeyError(f"{self.name} has no case {key!r}")


# ---------------------------------------------------------------------------------------------
# Helpers for the cases (run in the child)


def timed_job(
    job: Callable[[int], Any], check: Callable[[int, Any], None]
) -> Callable[[Params], Result]:
    """A case that runs ``job(p["warm"])`` once to warm up (not with ``--cold``), then times
    ``job(p["n"])``.

    The warm-up pays the one-time costs of a program (a start method's server, imports in the
    workers, first page faults) that W6 measures on its own. ``job`` builds the pool or pipeline,
    consumes every result and shuts it down; ``check`` verifies the output outside the timer.
    """

    def run(p: Params) -> Result:
        if os.environ.get(COLD_ENV) != "1":
            check(p["warm"], job(p["warm"]))
        start = time.perf_counter()
        out = job(p["n"])
        seconds = time.perf_counter() - start
        check(p["n"], out)
        return {"seconds": seconds}

    return run


def expect(what: str, got: Any, wanted: Any) -> None:
    if got != wanted:
        raise AssertionError(
            f"{what}: wrong output ({str(got)[:80]} instead of {str(wanted)[:80]})"
        )


def per_item_rate(key: str, count: str) -> Callable[[Result, Params], dict[str, float]]:
    """figures(): ``params[count]`` items over the measured seconds."""

    def figures(result: Result, params: Params) -> dict[str, float]:
        return {key: params[count] / result["seconds"]}

    return figures


def median(values: list[float]) -> float:
    return statistics.median(values)


# ---------------------------------------------------------------------------------------------
# Ray (the "headrace on Ray" and Ray Data rows)

#: The settings of every Ray row: a local Ray started by the child, as many CPUs as workers.
RAY_SETTINGS = "local Ray (num_cpus=2)"


def ray_started() -> Any:
    """The ray module, with a local Ray of 2 CPUs started once per child (the warm-up run
    pays for it, not the timed one)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    return ray


def ray_data() -> Any:
    """``ray.data``, keeping input order as headrace does (its default does not)."""
    ray = ray_started()
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    ray.data.DataContext.get_current().enable_progress_bars = False
    return ray.data
