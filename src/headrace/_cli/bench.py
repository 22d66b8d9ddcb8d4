"""``headrace bench``: headrace against its peers, side by side, on the same workloads.

The suite lives in the source checkout, beside ``src/`` (``benchmarks/``); this module finds it,
imports it as the package ``benchmarks`` and runs it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import headrace as hr

from ._args import USAGE, positive_int, say

NAME = "bench"
HELP = "compare headrace with the peers installed on this machine"
DESCRIPTION = (
    "Run the benchmark suite (benchmarks/ in the source checkout): each workload with headrace "
    "and with every installed peer, each in a fresh interpreter, repetitions interleaved; print "
    'the tables. Peers come with the bench extra: pip install -e ".[bench]".'
)
EXAMPLE = "headrace bench --quick --workload W1 --no-peers"

#: A path to the suite's folder, for a headrace that is not installed from its checkout.
BENCH_ENV = "HEADRACE_BENCHMARKS"


def _bench_folder() -> Path:
    """``$HEADRACE_BENCHMARKS``, else ``benchmarks/`` of the checkout headrace is installed from."""
    if os.environ.get(BENCH_ENV):
        return Path(os.environ[BENCH_ENV])
    # src/headrace/__init__.py -> the checkout's root (an editable install runs from there)
    return Path(hr.__file__).resolve().parents[2] / "benchmarks"


def _load_bench_suite(folder: Path) -> ModuleType | None:
    """Import the suite as the package ``benchmarks`` from ``folder``; None if it is not there."""
    init = folder / "__init__.py"
    if not init.is_file():
        return None
    spec = importlib.util.spec_from_file_location(
        "benchmarks", init, submodule_search_locations=[str(folder)]
    )
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchmarks"] = module
    spec.loader.exec_module(module)
    return module


def main(args: argparse.Namespace) -> int:
    folder = _bench_folder()
    suite = _load_bench_suite(folder)
    if suite is None:
        say(
            NAME,
            f"no benchmark suite at {folder}. The suite ships with the source checkout: install "
            'headrace from it (pip install -e ".[bench]"), or set '
            f"{BENCH_ENV} to its benchmarks/ folder.",
        )
        return USAGE
    code = suite.run_bench(
        quick=args.quick,
        workloads=args.workload,
        json_path=args.json,
        peers=not args.no_peers,
        systems=args.system,
        backend=args.backend,
        repeats=args.repeats,
        memory=args.memory,
        cold=args.cold,
        command=" ".join(["headrace", *args.argv]),
    )
    return int(code)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="smaller jobs, one repetition, no memory run (< 1 min)"
    )
    parser.add_argument(
        "--workload",
        nargs="+",
        action="extend",
        metavar="NAME",
        help="only these workloads (W1 W1t W2a W2b W3 W5a W5b W6 P1 and the domains'; "
        "default: all)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the figures here")
    parser.add_argument(
        "--no-peers",
        action="store_true",
        help="headrace on the local engine (and the references) only",
    )
    parser.add_argument(
        "--system",
        nargs="+",
        action="extend",
        metavar="NAME",
        help="only these peers (e.g. pool mpire dataloader), besides headrace",
    )
    parser.add_argument(
        "--backend",
        choices=("process", "thread"),
        default=None,
        help="headrace backend of the workloads (process; $HEADRACE_BENCH_BACKEND)",
    )
    parser.add_argument(
        "--repeats", type=positive_int, default=None, help="timed runs per case (5; --quick: 1)"
    )
    parser.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="sample peak memory in a separate run per case (default: yes, except --quick)",
    )
    parser.add_argument(
        "--cold",
        action="store_true",
        help="no warm-up: time each case's first job, as a one-shot script pays it",
    )
