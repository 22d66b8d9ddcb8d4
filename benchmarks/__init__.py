"""headrace's benchmark suite: headrace and its peers side by side, run by ``headrace bench``.

Layout: `workloads/` holds the workloads (W1, W2a, W2b, W3, W6, P1 and the physical references),
each written once per system; `_harness` plans and interleaves the runs; `_procs` runs one case in
a fresh interpreter in its own process session and samples its memory; `_child` is what that
interpreter runs; `report` renders the tables and BENCHMARKS.md from the JSON.

The suite lives in the source checkout, not in the installed package: ``headrace bench`` finds
it next to the ``src/`` that headrace is installed from (``pip install -e ".[bench]"``), or at
the path in ``HEADRACE_BENCHMARKS``. ``thread_overhead.py`` is a separate quick script.

This file imports nothing: worker processes import the package to reach a workload's functions.
"""

from __future__ import annotations

from typing import Any


def run_bench(**options: Any) -> int:
    """Run the suite; see `benchmarks._harness.run_bench`."""
    from ._harness import run_bench as run

    return run(**options)
