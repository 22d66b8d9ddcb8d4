"""A Streamer run in a worker process of headrace's process backend (`ProcessStreamer`).

Owns: `ProcessStreamer`, the process-backend twin of `ZMQStreamer`: the streamer runs in a
``transform`` stage with ``backend="process"``, so its items come back through headrace's own
transport (arrays through shared memory), supervised like any process stage. Builds on
`_streamer` and `_streams`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from .._streams import from_iterable
from ._streamer import Streamer, as_streamer, check_max_items


class _Drain:
    """The stage's function: one pass of the streamer per input (there is one input)."""

    def __init__(self, streamer: Streamer, limit: int | None, cycle: bool) -> None:
        self.streamer, self.limit, self.cycle = streamer, limit, cycle

    def __call__(self, inputs: Iterable[Any]) -> Iterator[Any]:
        for _ in inputs:
            s = self.streamer
            yield from s.cycle(self.limit) if self.cycle else s.iterate(self.limit)


class ProcessStreamer(Streamer):
    """Run a Streamer in a background process of headrace's process backend.

    The streamer (sent with cloudpickle) runs in one worker process; its items come back
    through headrace's process transport (arrays through shared memory, small items batched),
    so producing overlaps with consuming. Errors keep their type; a dead process is a
    `WorkerCrashedError`. As with any process stage under forkserver or spawn, a script that
    uses it needs an ``if __name__ == "__main__":`` guard (`ZMQStreamer` does not).

    Parameters
    ----------
    streamer : Streamer or iterable
        What to run in the background.
    name : str
        The stage's name in reports and errors.
    **run_options
        Passed to each run, e.g. ``start_method``.

    Examples
    --------
    >>> import headrace as hr
    >>> p = hr.ProcessStreamer(hr.Streamer(range, 5))  # doctest: +SKIP
    >>> list(p), list(p(max_items=2))  # doctest: +SKIP
    ([0, 1, 2, 3, 4], [0, 1])
    """

    def __init__(self, streamer: Any, *, name: str = "ProcessStreamer", **run_options: Any):
        self.streamer = as_streamer(streamer)
        self.name = name
        self.run_options = run_options

    def __repr__(self) -> str:
        return f"<ProcessStreamer of {self.streamer!r}>"

    def _detached(self) -> Streamer:
        return self  # its streamer is detached when each pass starts

    def _open(self) -> Iterator[Any]:
        return self._run(None, False)

    def iterate(self, max_items: int | None = None) -> Iterator[Any]:
        """A pass of at most ``max_items`` items, bounded in the background process too."""
        return self._run(check_max_items(max_items), False)

    def cycle(self, max_items: int | None = None) -> Iterator[Any]:
        """The streamer cycled in the background process."""
        return self._run(check_max_items(max_items), True)

    def _run(self, limit: int | None, cycle: bool) -> Iterator[Any]:
        drain = _Drain(self.streamer._detached(), limit, cycle)
        stream = from_iterable([None], name=f"{self.name}-start").transform(
            drain, backend="process", name=self.name
        )
        with stream.open(**self.run_options) as run:
            yield from run
