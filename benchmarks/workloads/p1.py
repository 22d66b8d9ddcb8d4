"""P1: a training-input pipeline (batches/s, peak PSS).

Records are zlib-compressed 128x128x3 uint8 images (about 48 kB each), made before the clock
starts. decode (about 1 ms of NumPy work: decompress, to float32, two 3x3 box blurs, normalise)
runs on 2 processes; a light augmentation (random flip and brightness) follows; batches of 32
reach a consumer that reads them.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from .._core import Case, Metric, Params, Result, Workload, backend, expect, timed_job

SHAPE = (128, 128, 3)
BATCH = 32
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def make_records(n: int) -> list[bytes]:
    """Compressed images with some structure and some noise (not timed)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    records = []
    for i in range(n):
        base = (xx * 2 + yy + i) % 256
        image = np.stack([base, (base * 3) % 256, 255 - base], -1)
        image = image + rng.integers(-8, 8, SHAPE)
        records.append(zlib.compress(np.clip(image, 0, 255).astype(np.uint8).tobytes(), 1))
    return records


def _blur(image: np.ndarray) -> np.ndarray:
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    out = np.zeros_like(image)
    for dy in range(3):
        for dx in range(3):
            out += padded[dy : dy + SHAPE[0], dx : dx + SHAPE[1]]
    out *= np.float32(1 / 9)
    return out


def decode(record: bytes) -> np.ndarray:
    raw = np.frombuffer(zlib.decompress(record), np.uint8).reshape(SHAPE)
    image = raw.astype(np.float32) * np.float32(1 / 255)
    return (_blur(_blur(image)) - MEAN) / STD


def augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.5:
        image = image[:, ::-1]
    return image * np.float32(rng.uniform(0.8, 1.2))


def consume(batch: Any) -> int:
    """The training step's stand-in: read the whole batch; returns its image count."""
    batch = np.asarray(batch)
    if batch.shape[1:] != SHAPE or batch.dtype != np.float32:
        raise AssertionError(f"P1: a batch of shape {batch.shape} and dtype {batch.dtype}")
    float(batch.sum())
    return len(batch)


def stacked(images: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """batch(32) by hand, for the systems without one."""
    chunk: list[np.ndarray] = []
    for image in images:
        chunk.append(image)
        if len(chunk) == BATCH:
            yield np.stack(chunk)
            chunk = []
    if chunk:
        yield np.stack(chunk)


def _augmented(images: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(0)
    return (augment(image, rng) for image in images)


#: Records per job size, made once per child before any timing.
RECORDS: dict[int, list[bytes]] = {}


def records(n: int) -> list[bytes]:
    if n not in RECORDS:
        RECORDS[n] = make_records(n)
    return RECORDS[n]


def check(n: int, out: int) -> None:
    expect("P1", out, n)


# ---------------------------------------------------------------------------------------------


def headrace_augment(image: np.ndarray) -> np.ndarray:
    import headrace as hr

    return augment(image, hr.rng())


def headrace_job(n: int) -> int:
    import headrace as hr

    stream = (
        hr.from_iterable(records(n))
        .map(decode, workers=2, backend=backend())
        .map(headrace_augment, backend="inline")
        .batch(BATCH)
    )
    return sum(consume(batch) for batch in stream)


class Records:
    """A map-style dataset: decode and augment record i."""

    def __init__(self, items: list[bytes]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> np.ndarray:
        return augment(decode(self.items[i]), np.random.default_rng(i))


def dataloader_job(n: int) -> int:
    from torch.utils.data import DataLoader

    loader = DataLoader(Records(records(n)), batch_size=BATCH, num_workers=2)
    return sum(consume(batch.numpy()) for batch in loader)


def pypeln_job(n: int) -> int:
    import pypeln as pl

    rng = np.random.default_rng(0)
    images = pl.process.map(decode, records(n), workers=2)
    images = pl.thread.map(lambda image: augment(image, rng), images)
    return sum(consume(batch) for batch in stacked(images))


def mpire_job(n: int) -> int:
    from mpire import WorkerPool

    with WorkerPool(n_jobs=2) as pool:
        images = pool.imap(decode, records(n))
        return sum(consume(batch) for batch in stacked(_augmented(images)))


def pool_job(n: int) -> int:
    import multiprocessing

    with multiprocessing.Pool(2) as pool:
        images = pool.imap(decode, records(n))
        return sum(consume(batch) for batch in stacked(_augmented(images)))


def _pescador_images(items: list[bytes]) -> Iterator[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    for record in items:
        yield {"x": augment(decode(record), rng)}


def pescador_job(n: int) -> int:
    import pescador

    streamer = pescador.ZMQStreamer(pescador.Streamer(_pescador_images, records(n)))
    return sum(
        consume(batch["x"]) for batch in pescador.buffer_stream(streamer, BATCH, partial=True)
    )


def serial_job(n: int) -> int:
    """The whole job in one process, one thread: the work itself, with no parallelism."""
    return sum(consume(batch) for batch in stacked(_augmented(map(decode, records(n)))))


def _case(key: str, system: str, settings: str, job: Any, *needs: str) -> Case:
    kind = {"headrace": "headrace", "serial": "reference"}.get(system, "peer")

    def run(p: Params) -> Result:
        records(p["n"]), records(p["warm"])  # made before the clock starts
        return timed_job(job, check)(p)

    return Case(key, system, settings, run, needs=needs, kind=kind)


def figures(result: Result, params: Params) -> dict[str, float]:
    return {"batches_per_s": -(-params["n"] // BATCH) / result["seconds"]}


WORKLOAD = Workload(
    name="P1",
    title="training input: decode on 2 processes -> augment -> batch(32) -> consumer",
    module="p1",
    metrics=(Metric("batches_per_s", "batches/s", higher_is_better=True, digits=1),),
    full={"n": 2048, "warm": 128},
    quick={"n": 256, "warm": 32},
    figures=figures,
    cases=(
        _case(
            "headrace",
            "headrace",
            'map(decode, workers=2, backend="{backend}").map(augment, backend="inline")'
            ".batch(32): augment and batch run in the decode workers",
            headrace_job,
        ),
        _case(
            "dataloader",
            "torch DataLoader",
            "num_workers=2, batch_size=32 (decode + augment + collate in workers); fork",
            dataloader_job,
            "torch",
        ),
        _case(
            "pypeln",
            "pypeln",
            "process.map(decode, workers=2) | thread.map(augment); batches stacked by the consumer",
            pypeln_job,
            "pypeln",
        ),
        _case(
            "mpire",
            "mpire",
            "WorkerPool(2).imap(decode), defaults; augment and stack in the consumer; fork",
            mpire_job,
            "mpire",
        ),
        _case(
            "pool",
            "multiprocessing.Pool",
            "imap(decode), chunksize=1 (default); augment and stack in the consumer; fork",
            pool_job,
        ),
        _case(
            "serial",
            "serial",
            "the same work in one process (a reference: 2 workers can at most about double it)",
            serial_job,
        ),
        _case(
            "pescador",
            "pescador",
            "ZMQStreamer: decode + augment in 1 worker process (its only form); buffer_stream(32)",
            pescador_job,
            "pescador",
        ),
    ),
)
