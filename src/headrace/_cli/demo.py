"""``headrace demo``: a built-in pipeline on generated data, the "does it work on this machine"
command.

It generates a small image dataset in a private temporary folder, runs a multi-stage pipeline
over it (load on threads, decode on processes, broadcast to an augment/batch/train branch and a
statistics branch), prints the report, writes the graph as DOT, and checks that every image
arrived in both branches.
"""

from __future__ import annotations

import argparse
import math
import shutil
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

import headrace as hr

from .. import _tempdirs
from ._args import FAILED, OK, PROGRESS_HINT, positive_int, progress_wanted, say

NAME = "demo"
HELP = "run a built-in example pipeline on generated data"
DESCRIPTION = (
    "Generate a small image dataset in a temporary directory, run a multi-stage pipeline over "
    "it (load, decode, broadcast to an augment/batch/train branch and a statistics branch), "
    "print the report and write the graph as DOT. Exit code 0 when every image arrived."
)
EXAMPLE = "headrace demo --items 1000 --out /tmp"

#: Images the demo generates by default: enough for a few batches and a visible progress
#: display, little enough to finish in a few seconds on two cores.
DEMO_ITEMS = 300
#: Shape of one generated image: height, width, channels.
DEMO_SHAPE = (64, 64, 3)
DEMO_BATCH = 32
DOT_NAME = "headrace-demo.dot"

Image = npt.NDArray[np.float32]


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
    progress = progress_wanted(NAME, progress)
    out.mkdir(parents=True, exist_ok=True)
    folder = Path(_tempdirs.make("demo"))
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
            say(NAME, PROGRESS_HINT)
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
        say(
            NAME,
            f"FAILED: expected {items} images in {batches} batches and {items} statistics; "
            "something was lost or duplicated",
        )
        return FAILED
    print("headrace demo: OK")
    return OK


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--items", type=positive_int, default=DEMO_ITEMS, help=f"images to generate ({DEMO_ITEMS})"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path.cwd(),
        help=f"directory for {DOT_NAME} (the current directory)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="do not show live progress on stderr"
    )


def main(args: argparse.Namespace) -> int:
    return demo(args.items, args.out, progress=not args.no_progress)
