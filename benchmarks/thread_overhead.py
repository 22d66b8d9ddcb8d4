"""Per-item overhead of the inline and thread backends: 200k ints through small pipelines.

Run: ``python benchmarks/thread_overhead.py``. Prints the median, min and max items/s of three
runs each. A seed for the side-by-side suite behind ``headrace bench`` (not a test).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import headrace as hr

N = 200_000


def inc(x: int) -> int:
    return x + 1


CASES: dict[str, Callable[[], hr.Stream]] = {
    "source -> consumer": lambda: hr.from_iterable(range(N)),
    "map backend=inline": lambda: hr.from_iterable(range(N)).map(inc, backend="inline"),
    "map thread workers=1": lambda: hr.from_iterable(range(N)).map(inc),
    "map thread workers=4": lambda: hr.from_iterable(range(N)).map(inc, workers=4),
    "3 maps thread": lambda: hr.from_iterable(range(N)).map(inc).map(inc).map(inc),
    "batch(32).unbatch()": lambda: hr.from_iterable(range(N)).batch(32).unbatch(),
}


def main() -> None:
    for name, build in CASES.items():
        rates = []
        for _ in range(3):
            start = time.perf_counter()
            count = len(build().collect())
            rates.append(count / (time.perf_counter() - start))
        print(
            f"{name:24s} median {statistics.median(rates) / 1e3:7.1f} k items/s"
            f"  (min {min(rates) / 1e3:.1f}, max {max(rates) / 1e3:.1f})"
        )


if __name__ == "__main__":
    main()
