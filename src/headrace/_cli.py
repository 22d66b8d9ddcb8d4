"""The ``headrace`` command line.

Owns: argument parsing and the subcommands: ``demo`` (a built-in pipeline on generated data, the
"does it work on this machine" command) and ``bench`` (headrace against its peers: it runs the
benchmark suite of the source checkout, ``benchmarks/``). Built only on the public API, like a
user's program; imports nothing private from headrace.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

import headrace as hr

#: Images the demo generates by default: enough for a few batches and a visible progress
#: display, little enough to finish in a few seconds on two cores.
DEMO_ITEMS = 300
#: Shape of one generated image: height, width, channels.
DEMO_SHAPE = (64, 64, 3)
DEMO_BATCH = 32
DOT_NAME = "headrace-demo.dot"
PROGRESS_HINT = 'live progress needs rich: pip install "headrace[progress]"'

Image = npt.NDArray[np.float32]


def _version() -> str:
    try:
        return importlib.metadata.version("headrace")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"


# ---------------------------------------------------------------------------------------------
# demo: the stage functions


def decode(raw: npt.NDArray[np.uint8]) -> Image:
    """uint8 pixels -> float32 in [-1, 1]."""
    return (raw.astype(np.float32) / np.float32(127.5)) - np.float32(1.0)


def augment(image: Image) -> Image:
    """Flip left-right with probability 1/2; ``hr.rng()`` makes the draw reproducible."""
    if hr.rng().random() < 0.5:
        return np.ascontiguousarray(image[:, ::-1])
    return image


def brightness(image: Image) -> float:
    return float(image.mean())


class Trainer:
    """Plays a training step: a squared-error loss of each batch against a fixed template."""

    def __init__(self) -> None:
        self.template = np.random.default_rng(1).uniform(-1, 1, DEMO_SHAPE).astype(np.float32)
        self.batches = 0
        self.images = 0
        self.loss = 0.0

    def step(self, batch: Image) -> None:
        self.batches += 1
        self.images += len(batch)
        self.loss += float(np.square(batch - self.template).mean())


def _write_images(folder: Path, count: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"image-{i:05d}.npy"
        np.save(path, rng.integers(0, 256, DEMO_SHAPE, dtype=np.uint8))
        paths.append(str(path))
    return paths


def _run_demo(paths: list[str], *, progress: bool) -> tuple[hr.Report, Trainer, list[float]]:
    """Build the demo graph afresh and run it."""
    trainer = Trainer()
    values: list[float] = []
    images = (
        hr.from_iterable(paths)
        .map(np.load, workers=2, name="load")
        .map(decode, workers=2, backend="process", name="decode")  # CPU work: processes
    )
    # `images` is used twice: both branches see every image (broadcast).
    train = (
        images.map(augment, workers=2, name="augment")
        .batch(DEMO_BATCH, name="batch")
        .sink(trainer.step, name="train")
    )
    stats = images.map(brightness, name="brightness").sink(values.append, name="record")
    report = hr.run(train, stats, progress=progress, seed=0)
    return report, trainer, values


def demo(items: int, out: Path, *, progress: bool) -> int:
    if progress and importlib.util.find_spec("rich") is None:
        print(PROGRESS_HINT, file=sys.stderr)
        progress = False
    out.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="headrace-demo-"))
    try:
        started = time.perf_counter()
        paths = _write_images(folder, items)
        made = time.perf_counter() - started
        print(f"generated {items} images of {DEMO_SHAPE} uint8 in {folder} ({made:.2f} s)")
        try:
            report, trainer, values = _run_demo(paths, progress=progress)
        except ImportError:
            if not progress:
                raise
            print(PROGRESS_HINT, file=sys.stderr)
            report, trainer, values = _run_demo(paths, progress=False)
        print()
        print(report.table())
        dot = out / DOT_NAME
        dot.write_text(report.to_dot(), encoding="utf-8")
        print()
        print(f"graph diagram (DOT) written to {dot}; render it with: dot -Tsvg {dot} -o demo.svg")
        return _check(items, trainer, values)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _check(items: int, trainer: Trainer, values: list[float]) -> int:
    """Say what the run did, and whether every image arrived in both branches."""
    batches = math.ceil(items / DEMO_BATCH)
    print(
        f"train branch: {trainer.images} images in {trainer.batches} batches, "
        f"mean loss {trainer.loss / max(trainer.batches, 1):.6f}"
    )
    mean = sum(values) / len(values) if values else float("nan")
    print(f"stats branch: {len(values)} images, mean brightness {mean:+.6f}")
    if trainer.images != items or trainer.batches != batches or len(values) != items:
        print(
            f"headrace demo: FAILED: expected {items} images in {batches} batches and {items} "
            "statistics; something was lost or duplicated",
            file=sys.stderr,
        )
        return 1
    print("headrace demo: OK")
    return 0


# ---------------------------------------------------------------------------------------------
# bench: the suite lives in the source checkout, beside src/

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


def bench(args: Any, argv: Sequence[str]) -> int:
    folder = _bench_folder()
    suite = _load_bench_suite(folder)
    if suite is None:
        print(
            f"headrace bench: no benchmark suite at {folder}. The suite ships with the source "
            'checkout: install headrace from it (pip install -e ".[bench]"), or set '
            f"{BENCH_ENV} to its benchmarks/ folder.",
            file=sys.stderr,
        )
        return 2
    code = suite.run_bench(
        quick=args.quick,
        workloads=args.workload,
        json_path=args.json,
        peers=not args.no_peers,
        systems=args.system,
        backend=args.backend,
        repeats=args.repeats,
        memory=args.memory,
        command=" ".join(["headrace", *argv]),
    )
    return int(code)


# ---------------------------------------------------------------------------------------------
# the parser


def _items(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headrace",
        description="Parallel streaming data pipelines for numerical and machine-learning data.",
    )
    parser.add_argument("--version", action="version", version=f"headrace {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo_parser = commands.add_parser(
        "demo",
        help="run a built-in example pipeline on generated data",
        description=(
            "Generate a small image dataset in a temporary directory, run a multi-stage "
            "pipeline over it (load, decode, broadcast to an augment/batch/train branch and a "
            "statistics branch), print the report and write the graph as DOT."
        ),
    )
    demo_parser.add_argument(
        "--items", type=_items, default=DEMO_ITEMS, help=f"images to generate ({DEMO_ITEMS})"
    )
    demo_parser.add_argument(
        "--out",
        type=Path,
        default=Path.cwd(),
        help=f"directory for {DOT_NAME} (the current directory)",
    )
    demo_parser.add_argument(
        "--no-progress", action="store_true", help="do not show live progress on stderr"
    )
    bench_parser = commands.add_parser(
        "bench",
        help="compare headrace with the peers installed on this machine",
        description=(
            "Run the benchmark suite (benchmarks/ in the source checkout): each workload with "
            "headrace and with every installed peer, each in a fresh interpreter, repetitions "
            "interleaved; print the tables. Peers come with the bench extra: "
            'pip install -e ".[bench]".'
        ),
    )
    bench_parser.add_argument(
        "--quick", action="store_true", help="smaller jobs, one repetition, no memory run (< 1 min)"
    )
    bench_parser.add_argument(
        "--workload",
        nargs="+",
        action="extend",
        metavar="NAME",
        help="only these workloads (W1 W2a W2b W3 W5a W5b W6 P1; default: all)",
    )
    bench_parser.add_argument("--json", type=Path, metavar="PATH", help="write the figures here")
    bench_parser.add_argument(
        "--no-peers", action="store_true", help="headrace (and the references) only"
    )
    bench_parser.add_argument(
        "--system",
        nargs="+",
        action="extend",
        metavar="NAME",
        help="only these peers (e.g. pool mpire dataloader), besides headrace",
    )
    bench_parser.add_argument(
        "--backend",
        choices=("process", "thread"),
        default=None,
        help="headrace backend of the workloads (process; $HEADRACE_BENCH_BACKEND)",
    )
    bench_parser.add_argument(
        "--repeats", type=_items, default=None, help="timed runs per case (5; --quick: 1)"
    )
    bench_parser.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="sample peak memory in a separate run per case (default: yes, except --quick)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``headrace`` command; returns the exit code."""
    parser = build_parser()
    args: Any = parser.parse_args(argv)
    if args.command == "demo":
        return demo(args.items, args.out, progress=not args.no_progress)
    if args.command == "bench":
        return bench(args, sys.argv[1:] if argv is None else argv)
    parser.print_help(sys.stderr)
    return 2
