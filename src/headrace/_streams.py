"""Streams: the public handles on a graph, and runs of them.

Owns: `Stream` (immutable; each method adds a stage downstream), `Run` (one execution: iterate,
report, close), the sources and combinators `from_iterable`, `merge`, `zip`, the graph-level
`run` and `to_dot`, and `rng`. Builds on the runner; nothing below imports it. It imports only
what building a graph needs (`_graph`, `_stages`): a process stage starts the forkserver as it
is built, and the runner, the backends and the reports load afterwards, while the server boots.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np

    from ._monitor import Report
    from ._run import Run

from . import _graph
from ._errors import GraphError
from ._graph import Node, Plan, compile_plan
from ._stages import (
    StageOptions,
    batch_body,
    callable_name,
    check_callable,
    check_count,
    check_options,
    identity_body,
    rebatch_body,
    stage_options,
    take_body,
    unbatch_body,
)


class StageKwargs(TypedDict, total=False):
    """The options every stage takes (see `Stream.map`)."""

    workers: int
    backend: str
    ordered: bool
    maxsize: int | None
    on_error: str
    retries: int
    timeout: float | None
    name: str | None


class Stream:
    """A lazy, immutable handle on one output of a graph node.

    Building a stream runs none of the user's code (a process stage starts the forkserver its
    workers will come from, in the background); each method returns a new stream downstream of
    this one.
    Using a stream twice broadcasts: every branch sees every item.

    Stage options (keyword-only, the same on every stage): ``workers`` (default 1),
    ``backend`` (``"thread"``, or ``"inline"``: no pool, the stage runs in the thread that
    feeds it), ``ordered`` (outputs in input order, default True), ``maxsize`` (capacity of the
    output channel), ``on_error`` (``"raise"`` or ``"skip"``: record the item and go on),
    ``retries`` (calls again an item whose call raised), ``timeout`` (seconds per item), and
    ``name`` (shown in reports, diagrams and errors).

    Examples
    --------
    >>> import headrace as hr
    >>> hr.from_iterable(range(6)).map(lambda x: x * x, workers=2).filter(lambda x: x % 2).collect()
    [1, 9, 25]
    """

    __slots__ = ("_node", "_port")

    def __init__(self, node: Node, port: int = 0) -> None:
        self._node = node
        self._port = port

    def __repr__(self) -> str:
        opts = self._node.options
        return f"<Stream {self._node.kind} {self._node.label!r} ({opts.backend} x {opts.workers})>"

    # --- building ---------------------------------------------------------------------------

    def _add(self, kind: str, fn: Any, options: StageOptions, *, ports: int = 1) -> Node:
        if self._node.kind == "sink":
            raise GraphError(
                f"cannot add a {kind} stage after sink {self._node.label!r}: a sink yields "
                "nothing; put the sink last"
            )
        label = options.name or callable_name(fn, kind)
        if options.backend == "process":
            from ._backends._process import prestart

            prestart(fn)  # the forkserver boots while the rest of the pipeline is built
        return Node(kind, fn, options, ((self._node, self._port),), ports=ports, label=label)

    def _call_stage(self, kind: str, fn: Any, options: StageKwargs) -> Stream:
        check_callable(fn)
        return Stream(self._add(kind, fn, stage_options(f"Stream.{kind}", options)))

    def _builtin(self, kind: str, body: Any, name: str | None, maxsize: int | None) -> Stream:
        opts = StageOptions(backend="inline", name=name or kind, maxsize=maxsize)
        return Stream(self._add(kind, body, opts))

    def map(self, fn: Callable[[Any], Any], **options: Unpack[StageKwargs]) -> Stream:
        """Call ``fn`` on every item (1 -> 1). A class is instantiated once per worker.

        Examples
        --------
        >>> import headrace as hr
        >>> hr.from_iterable([1, 2, 3]).map(str, workers=2).collect()
        ['1', '2', '3']
        """
        return self._call_stage("map", fn, options)

    def filter(self, pred: Callable[[Any], Any], **options: Unpack[StageKwargs]) -> Stream:
        """Keep the items for which ``pred`` is true (1 -> 0/1).

        Examples
        --------
        >>> import headrace as hr
        >>> hr.from_iterable(range(5)).filter(lambda x: x > 2).collect()
        [3, 4]
        """
        check_callable(pred, "pred")
        return Stream(self._add("filter", pred, stage_options("Stream.filter", options)))

    def flat_map(
        self, fn: Callable[[Any], Iterable[Any]], **options: Unpack[StageKwargs]
    ) -> Stream:
        """Call ``fn`` on every item and yield each element of the iterable it returns (1 -> n).

        Examples
        --------
        >>> import headrace as hr
        >>> hr.from_iterable([1, 2]).flat_map(lambda x: [x] * x).collect()
        [1, 2, 2]
        """
        return self._call_stage("flat_map", fn, options)

    def transform(
        self, fn: Callable[[Iterator[Any]], Iterable[Any]], **options: Unpack[StageKwargs]
    ) -> Stream:
        """``fn`` takes an iterator of inputs and yields outputs (stateful, n -> m).

        With ``workers > 1`` each worker runs ``fn`` over its own share of the stream. Under
        ``on_error="skip"`` a failing ``fn`` is recorded and started again on the items that
        follow. ``retries`` and ``timeout`` do not apply: an output belongs to no single item.

        Examples
        --------
        >>> import headrace as hr
        >>> def running_sum(items):
        ...     total = 0
        ...     for x in items:
        ...         total += x
        ...         yield total
        >>> hr.from_iterable([1, 2, 3]).transform(running_sum).collect()
        [1, 3, 6]
        """
        stream = self._call_stage("transform", fn, options)
        opts = stream._node.options
        if opts.retries:
            raise ValueError("retries does not apply to transform: its outputs have no one item")
        if opts.timeout is not None:
            raise ValueError("timeout does not apply to transform: its outputs have no one item")
        return stream

    def sink(self, fn: Callable[[Any], Any], **options: Unpack[StageKwargs]) -> Stream:
        """Call ``fn`` on every item for its effect; the stream it returns yields nothing.

        Examples
        --------
        >>> import headrace as hr
        >>> seen = []
        >>> report = hr.from_iterable("ab").sink(seen.append).run()
        >>> seen
        ['a', 'b']
        """
        return self._call_stage("sink", fn, options)

    def route(
        self, fn: Callable[[Any], Any], n: int, **options: Unpack[StageKwargs]
    ) -> tuple[Stream, ...]:
        """Split into ``n`` branches: ``fn(item)`` returns a branch index, an iterable of
        indices, or None (drop the item).

        Examples
        --------
        >>> import headrace as hr
        >>> evens, odds = hr.from_iterable(range(6)).route(lambda x: x % 2, 2)
        >>> sorted(hr.merge(evens.map(lambda x: -x), odds).collect())
        [-4, -2, 0, 1, 3, 5]
        """
        check_callable(fn)
        count = check_count("n", n)
        node = self._add("route", fn, stage_options("Stream.route", options), ports=count)
        return tuple(Stream(node, port) for port in range(count))

    def batch(
        self,
        size: int,
        *,
        drop_last: bool = False,
        collate: Any = "auto",
        name: str | None = None,
        maxsize: int | None = None,
    ) -> Stream:
        """Group items into batches of ``size``.

        ``collate="auto"`` stacks arrays (and dicts / tuples of arrays) along a new axis 0 and
        makes lists of anything else; ``None`` always makes lists; a callable gets the list.

        Examples
        --------
        >>> import headrace as hr, numpy as np
        >>> hr.from_iterable(range(5)).batch(2).collect()
        [[0, 1], [2, 3], [4]]
        >>> hr.from_iterable([np.zeros(3)] * 4).batch(4).collect()[0].shape
        (4, 3)
        """
        size = check_count("size", size)
        if not (collate == "auto" or collate is None or callable(collate)):
            raise TypeError(f"collate must be 'auto', None or a callable, got {collate!r}")
        stream = self._builtin("batch", batch_body(size, drop_last, collate), name, maxsize)
        stream._node.args.update(size=size, collate=collate)  # a process worker may batch
        return stream

    def rebatch(
        self,
        rows: int,
        *,
        drop_last: bool = False,
        name: str | None = None,
        maxsize: int | None = None,
    ) -> Stream:
        """Re-chunk array (or dict-of-array) batches of any size into ``rows`` rows each.

        Examples
        --------
        >>> import headrace as hr, numpy as np
        >>> batches = [np.arange(3), np.arange(4)]
        >>> [b.tolist() for b in hr.from_iterable(batches).rebatch(2).collect()]
        [[0, 1], [2, 0], [1, 2], [3]]
        """
        rows = check_count("rows", rows)
        return self._builtin("rebatch", rebatch_body(rows, drop_last), name, maxsize)

    def unbatch(self, *, name: str | None = None, maxsize: int | None = None) -> Stream:
        """Split batches back into items: the inverse of `batch` and `rebatch`.

        Examples
        --------
        >>> import headrace as hr
        >>> hr.from_iterable([[1, 2], [3]]).unbatch().collect()
        [1, 2, 3]
        """
        return self._builtin("unbatch", unbatch_body, name, maxsize)

    def take(self, n: int, *, name: str | None = None) -> Stream:
        """At most ``n`` items; then the stages upstream stop cleanly.

        Examples
        --------
        >>> import headrace as hr, itertools
        >>> hr.from_iterable(itertools.count()).map(lambda x: x * 2).take(3).collect()
        [0, 2, 4]
        """
        n = check_count("n", n, minimum=0)
        stream = self._builtin("take", take_body(n), name, None)
        stream._node.args["n"] = n  # its input channel need not hold more
        return stream

    def prefetch(self, n: int, *, name: str | None = None) -> Stream:
        """A buffer of ``n`` items, so the stages upstream run ahead of the consumer.

        Examples
        --------
        >>> import headrace as hr
        >>> hr.from_iterable(range(3)).prefetch(8).collect()
        [0, 1, 2]
        """
        n = check_count("n", n)
        return self._builtin("prefetch", identity_body, name, n)

    # --- running ----------------------------------------------------------------------------

    def open(self, **run_options: Any) -> Run:
        """Start a run: iterate it, read ``report()``, close it (or use it in a ``with``).

        Run options: ``progress=False`` (live per-stage lines on stderr), ``seed=None`` (base
        of `rng`), ``engine=None`` (the local engine; `RayEngine` runs process stages as Ray
        actors), ``memory=None`` (a byte budget: the
        shared memory that process stages use for arrays), ``start_method=None`` (how process
        workers start: ``"forkserver"`` by default on Linux, ``"spawn"``, or ``"fork"``; also
        set by ``$HEADRACE_START_METHOD``).

        Examples
        --------
        >>> import headrace as hr
        >>> with hr.from_iterable(range(3)).map(abs).open() as run:
        ...     items = list(run)
        >>> items, run.report().stage("abs").items_out
        ([0, 1, 2], 3)
        """
        return _open([self], "Stream.open", run_options)

    def __iter__(self) -> Iterator[Any]:
        run = self.open()
        try:
            yield from run
        finally:
            run.close()

    def collect(self, **run_options: Any) -> list[Any]:
        """Run the stream and return its items as a list."""
        items: list[Any] = []
        with _open([self], "Stream.collect", run_options) as run:
            for values in run.chunks():
                items.extend(values)
        return items

    def run(self, **run_options: Any) -> Report:
        """Run the stream to the end, discarding its items, and return the report."""
        with _open([self], "Stream.run", run_options) as execution:
            execution.drain()
        return execution.report()

    def to_dot(self, report: Report | None = None) -> str:
        """Graphviz DOT text of the graph behind this stream, annotated with ``report``."""
        return to_dot(self, report=report)

    def to_torch(self, *, tensors: bool = True, **run_options: Any) -> Any:
        """A PyTorch ``IterableDataset`` over this stream: each iteration is one run.

        Arrays become tensors (sharing memory where they can) unless ``tensors=False``. Use it
        with ``DataLoader(dataset, batch_size=None, num_workers=0)``: the stream batches, and
        its stages are the workers. Needs torch, imported only here.

        Examples
        --------
        >>> import headrace as hr, numpy as np
        >>> dataset = hr.from_iterable([np.ones(2)] * 4).batch(2).to_torch()  # doctest: +SKIP
        >>> [tuple(t.shape) for t in dataset]  # doctest: +SKIP
        [(2, 2), (2, 2)]
        """
        check_options("Stream.to_torch", run_options, _run_options(), "run option")
        from ._adapters import torch_dataset  # NumPy and torch: on use

        return torch_dataset(self, run_options, tensors)


def _plan(streams: Iterable[Stream]) -> Plan:
    return compile_plan(_terminals(streams))


def _terminals(streams: Iterable[Stream]) -> list[tuple[Node, int]]:
    return [(s._node, s._port) for s in streams]


@functools.cache
def _run_options() -> tuple[str, ...]:
    """The keyword options of a run (those of `Run`), which `collect`, `run` and `open` pass
    on. `_run` is imported here, not at the top: the runner and the backends load while a
    process stage's forkserver, started as the pipeline is built (`Stream._add`), boots. Read
    from the code object, not with `inspect` (whose imports would take a few ms then)."""
    from ._run import Run

    code = Run.__init__.__code__
    return code.co_varnames[code.co_argcount : code.co_argcount + code.co_kwonlyargcount]


def _open(streams: list[Stream], where: str, run_options: dict[str, Any]) -> Run:
    """A `Run`, naming the public function ``where`` when an option is misspelt."""
    from ._run import Run

    check_options(where, run_options, _run_options(), "run option")
    return Run(_terminals(streams), **run_options)


def _not_iterable(obj: object) -> str:
    if callable(obj):
        fn = callable_name(obj, "fn")
        return (
            f"from_iterable takes an iterable, got the function {fn!r}; call it "
            f"(hr.from_iterable({fn}(...))) to run the stream once, or pass "
            f"hr.Streamer({fn}, *args), which calls it afresh on every run"
        )
    return f"iterable must be iterable, got {type(obj).__name__}"


def from_iterable(iterable: Iterable[Any], *, name: str = "source") -> Stream:
    """A stream over ``iterable``. A re-iterable one (list, range, array) is iterated afresh
    on every run; a one-shot iterator can run once.

    Examples
    --------
    >>> import headrace as hr
    >>> hr.from_iterable(range(3)).collect()
    [0, 1, 2]
    """
    if not isinstance(iterable, Iterable):
        raise TypeError(_not_iterable(iterable))
    one_shot = iter(iterable) is iterable
    node = Node(
        "source",
        None,
        StageOptions(backend="inline", name=name),
        label=name,
        args={"iterable": iterable, "one_shot": one_shot},
    )
    return Stream(node)


def _combine(kind: str, streams: tuple[Stream, ...], name: str | None) -> Node:
    if not streams:
        raise ValueError(f"{kind} needs at least one stream")
    for stream in streams:
        if not isinstance(stream, Stream):
            raise TypeError(f"{kind} takes streams, got {type(stream).__name__}")
        if stream._node.kind == "sink":
            raise GraphError(f"cannot {kind} sink {stream._node.label!r}: it yields nothing")
    opts = StageOptions(backend="inline", name=name or kind)
    inputs = tuple((s._node, s._port) for s in streams)
    return Node(kind, identity_body, opts, inputs, label=opts.name or kind)


def merge(*streams: Stream, name: str | None = None) -> Stream:
    """Fan-in: the items of every stream, interleaved as they arrive, each in its own order.

    Examples
    --------
    >>> import headrace as hr
    >>> sorted(hr.merge(hr.from_iterable([1, 2]), hr.from_iterable([3])).collect())
    [1, 2, 3]
    """
    return Stream(_combine("merge", streams, name))


def zip(*streams: Stream, name: str | None = None) -> Stream:
    """Tuples of the branches' outputs for the same input item (a parallel feature union).

    Every stream must be a 1 -> 1 branch of one common stream, else `GraphError`.

    Examples
    --------
    >>> import headrace as hr
    >>> xs = hr.from_iterable([1, 2, 3])
    >>> hr.zip(xs.map(lambda x: x * 10), xs.map(str)).collect()
    [(10, '1'), (20, '2'), (30, '3')]
    """
    node = _combine("zip", streams, name)
    _graph.check_zip(node)
    return Stream(node)


def _discard(item: Any) -> None:
    """Drops an item (the sink behind a plain terminal stream of `run`)."""


def run(*streams: Stream, **run_options: Any) -> Report:
    """Run a graph with one or more terminal streams (usually sinks) to the end.

    The items of a terminal stream that is not a sink are discarded.

    Examples
    --------
    >>> import headrace as hr
    >>> got = []
    >>> xs = hr.from_iterable(range(4))
    >>> report = hr.run(xs.sink(got.append), xs.map(lambda x: -x))
    >>> got, report.stage("source").items_out
    ([0, 1, 2, 3], 4)
    """
    if not streams:
        raise ValueError("run needs at least one stream")
    for stream in streams:
        if not isinstance(stream, Stream):
            raise TypeError(f"run takes streams, got {type(stream).__name__}")
    # Items of a plain terminal stream are discarded by a fused sink, so that no outlet waits
    # for another (a broadcast would otherwise block on the outlet read last).
    terminals = [
        s if s._node.kind == "sink" else s.sink(_discard, backend="inline", name="discard")
        for s in streams
    ]
    with _open(terminals, "hr.run", run_options) as execution:
        execution.drain()
    return execution.report()


def to_dot(*streams: Stream, report: Report | None = None) -> str:
    """Graphviz DOT text of the graph behind ``streams``, annotated with ``report``.

    Examples
    --------
    >>> import headrace as hr
    >>> print(hr.from_iterable([1]).map(abs).to_dot().splitlines()[0])
    digraph headrace {
    """
    from ._run import _dot

    return _dot(_plan(streams), report)


def render(
    streams: Stream | Sequence[Stream],
    path: str | os.PathLike[str],
    *,
    report: Report | None = None,
    format: str | None = None,
) -> Path:
    """Draw the graph behind ``streams`` (annotated with ``report``) into the file ``path``.

    The format comes from the suffix of ``path`` (``.svg``, ``.png``, ``.pdf``...) unless
    ``format`` is given; ``.dot`` writes the DOT text of `to_dot` itself. Drawing needs the
    ``graphviz`` package (``pip install "headrace[graphviz]"``) and Graphviz's ``dot`` program;
    an error says which one is missing and how to install it. `Report.render` draws the graph
    of a finished run.

    Examples
    --------
    >>> import headrace as hr, pathlib, tempfile
    >>> stream = hr.from_iterable(range(3)).map(abs)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = hr.render(stream, pathlib.Path(folder, "graph.dot"))
    ...     "abs" in path.read_text()
    True
    """
    from ._monitor import render_dot

    chosen = (streams,) if isinstance(streams, Stream) else tuple(streams)
    return render_dot(to_dot(*chosen, report=report), path, format=format)


def rng() -> np.random.Generator:
    """A NumPy generator for the item being processed.

    Inside a stage it is seeded from (the run's ``seed``, the stage's position in the graph,
    the item's index), so draws do not depend on worker count or scheduling. Outside a stage
    it is a fresh, unseeded generator.

    Examples
    --------
    >>> import headrace as hr
    >>> draw = lambda x: float(hr.rng().random())
    >>> a = hr.from_iterable(range(4)).map(draw, workers=2).collect(seed=7)
    >>> b = hr.from_iterable(range(4)).map(draw, workers=1).collect(seed=7)
    >>> a == b
    True
    """
    import numpy as np

    from ._backends._base import cache_rng, item_entropy, item_rng

    entropy = item_entropy()
    if entropy is None:
        return np.random.default_rng()
    generator = item_rng(entropy)
    if generator is None:
        generator = np.random.default_rng(list(entropy))
        cache_rng(entropy, generator)
    return generator  # type: ignore[no-any-return]
