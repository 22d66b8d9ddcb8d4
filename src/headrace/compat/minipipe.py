"""Minipipe's API on headrace: ``from headrace.compat.minipipe import PipeLine, Source, ...``.

Covers Minipipe 0.1.x as its documentation describes it: the segments `Source` (a generator),
`Regulator` (a coroutine: ``x = (yield)``, then any number of outputs), `Transform` and `Sink`
(a function, or an object with ``run`` and optional ``local_init`` / ``local_term``), joined by
`Stream` s; `PipeLine` (linear, ``add(segment, n_processes, buffer_size)``) and `PipeSystem`
(any topology) with ``build`` / ``run`` / ``close`` / ``reset`` / ``diagram``. Built only on
the public ``headrace`` package.

How a system maps onto headrace: each group of identical segments (same functor and streams)
is one stage whose worker count is the group's size, on process workers by default; a stream
written by several segments is a `headrace.merge`; a stream read by several groups is a
`Stream.route` that deals its items to the groups in proportion to their sizes (Minipipe's
readers compete, so each item still reaches exactly one reader); a segment returning a list
for several downstreams is a route on the entries that are not None. ``run()`` starts the run
in a background thread and ``close()`` waits for it and raises the first error of a segment
with its original type (Minipipe only logs it in the worker).
"""

from __future__ import annotations

import copy
import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import headrace as hr

__all__ = [
    "Pipe",
    "PipeLine",
    "PipeSystem",
    "Regulator",
    "Sentinel",
    "Sink",
    "Source",
    "Stream",
    "Transform",
]

LOGGER = "minipipe"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
QUEUE_TYPES = ("multiprocessing.queue", "multiprocessing.simplequeue")
#: Channels of at most this many items get headrace's default size instead (see `_Graph`).
CHANNEL_FLOOR = 64
LOG_FORMAT = "%(asctime)s - %(levelname)s - %(pname)s - %(message)s"


class Sentinel:
    """Yielded by a `Source`, ends its stream (as in Minipipe)."""


def _check_queue_type(queue_type: str) -> str:
    if not isinstance(queue_type, str) or queue_type.lower() not in QUEUE_TYPES:
        raise ValueError(
            "queue_type must be 'multiprocessing.Queue' or 'multiprocessing.SimpleQueue', "
            f"got {queue_type!r}"
        )
    return queue_type


class Stream:
    """A connection between segments: what some segments write and others read.

    ``buffer_size`` bounds the items in flight on it (the capacity of the writers' channels);
    ``timeout`` and ``queue_type`` are accepted for compatibility (headrace's channels need
    neither); ``monitor`` logs the run's figures when it ends.

    Examples
    --------
    >>> from headrace.compat.minipipe import Stream
    >>> Stream(buffer_size=10).buffer_size
    10
    """

    def __init__(
        self,
        name: str = "stream",
        buffer_size: int = 3,
        timeout: float | None = None,
        monitor: bool = False,
        queue_type: str = "multiprocessing.Queue",
    ) -> None:
        if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 1:
            raise ValueError(f"buffer_size must be an integer >= 1, got {buffer_size!r}")
        self.name = name
        self.buffer_size = buffer_size
        self.timeout = timeout
        self.monitor = monitor
        self.queue_type = _check_queue_type(queue_type)

    def __repr__(self) -> str:
        return f"Stream({self.name!r})"


class Pipe:
    """The base of the segments: a functor, a name, its upstreams and downstreams."""

    kind = "transform"

    def __init__(
        self,
        functor_obj: Any,
        name: str | None = None,
        upstreams: list[Stream] | None = None,
        downstreams: list[Stream] | None = None,
        ignore_exceptions: list[type[BaseException]] | None = None,
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        for stream in [*(upstreams or []), *(downstreams or [])]:
            if not isinstance(stream, Stream):
                raise TypeError(f"upstreams and downstreams take Streams, got {stream!r}")
        self.functor_obj = functor_obj
        self.name = name or type(self).__name__  # Minipipe's default: the segment's kind
        self.upstreams: list[Stream] = list(upstreams or [])
        self.downstreams: list[Stream] = list(downstreams or [])
        self.ignore_exceptions = list(ignore_exceptions or [])
        self.init_kwargs = dict(init_kwargs or {})
        self._workers = 1

    def __repr__(self) -> str:
        return self.name

    def set_upstreams(self, upstreams: list[Stream]) -> None:
        self.upstreams = list(upstreams)

    def set_downstreams(self, downstreams: list[Stream]) -> None:
        self.downstreams = list(downstreams)

    def get_upstreams(self) -> list[Stream]:
        return self.upstreams

    def get_downstreams(self) -> list[Stream]:
        return self.downstreams


class Source(Pipe):
    """A generator (or a function returning one) that feeds its downstreams.

    Yielding ``None`` skips; yielding `Sentinel` ends the stream.
    """

    kind = "source"

    def __init__(
        self,
        functor_obj: Any,
        name: str = "Source",
        downstreams: list[Stream] | None = None,
        ignore_exceptions: list[type[BaseException]] | None = None,
    ) -> None:
        super().__init__(functor_obj, name, None, downstreams, ignore_exceptions)


class Transform(Pipe):
    """Calls its functor with one item from each upstream; a ``None`` result is dropped."""


class Regulator(Transform):
    """A coroutine (``x = (yield)``, then any number of outputs) that changes the item rate.

    It is made with ``functor(**init_kwargs)`` on its worker and made again whenever it ends.
    """

    kind = "regulator"


class Sink(Pipe):
    """Calls its functor with one item from each upstream, for its effect."""

    kind = "sink"

    def __init__(
        self,
        functor_obj: Any,
        name: str = "Sink",
        upstreams: list[Stream] | None = None,
        ignore_exceptions: list[type[BaseException]] | None = None,
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(functor_obj, name, upstreams, None, ignore_exceptions, init_kwargs)


# --- what runs on a worker -----------------------------------------------------------------


def _segment_body(
    kind: str,
    functor_obj: Any,
    init_kwargs: dict[str, Any],
    name: str,
    ignore: tuple[type[BaseException], ...],
    level: int,
    n_inputs: int,
) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """The `Stream.transform` body of one segment: a worker's share of its items in, the
    segment's outputs (never None) out."""

    def body(items: Iterator[Any]) -> Iterator[Any]:
        log = logging.getLogger(LOGGER)
        log.setLevel(level)  # a process worker starts at the parent's root level
        extra = {"pname": name}
        obj = copy.copy(functor_obj) if hasattr(functor_obj, "run") else functor_obj
        if hasattr(obj, "local_init"):
            obj.local_init(**init_kwargs)
        fn = obj.run if hasattr(obj, "run") else obj
        if kind == "source":
            outputs = _source_outputs(fn, ignore, log, extra)
        elif kind == "regulator":
            outputs = _regulator_outputs(fn, init_kwargs, items, ignore, log, extra)
        else:
            outputs = _call_outputs(fn, items, n_inputs, kind == "sink", ignore, log, extra)
        yield from outputs
        if hasattr(obj, "local_term"):
            obj.local_term()
        log.info("Local termination", extra=extra)

    return body


def _stateful(functor: Any) -> bool:
    return any(hasattr(functor, a) for a in ("run", "local_init", "local_term"))


def _not_none(x: Any) -> bool:
    return x is not None


def _per_item(
    functor: Any, name: str, ignore: tuple[type[BaseException], ...], level: int, n_inputs: int
) -> Callable[[Any], Any]:
    """A plain function segment as a `Stream.map` call: one item in, its result (or None)."""

    def call(x: Any) -> Any:
        try:
            return functor(*x) if n_inputs > 1 else functor(x)
        except Exception as exc:
            log = logging.getLogger(LOGGER)
            log.setLevel(level)
            if not _ignored(exc, ignore):
                log.error(str(exc), extra={"pname": name})
                raise
            log.warning(str(exc), extra={"pname": name})
            return None

    return call


def _ignored(exc: BaseException, ignore: tuple[type[BaseException], ...]) -> bool:
    return type(exc) in ignore


def _source_outputs(fn: Any, ignore: Any, log: logging.Logger, extra: Any) -> Iterator[Any]:
    try:
        generator = fn if isinstance(fn, Iterator) else fn()
        for x in generator:
            if x is Sentinel:
                break
            if x is not None:
                yield x
    except Exception as exc:
        if not _ignored(exc, ignore):
            log.error(str(exc), extra=extra)
            raise
        log.warning(str(exc), extra=extra)
    log.info("End of stream", extra=extra)


def _call_outputs(
    fn: Any, items: Iterator[Any], n_inputs: int, sink: bool, ignore: Any, log: Any, extra: Any
) -> Iterator[Any]:
    for x in items:
        args = x if n_inputs > 1 else (x,)
        try:
            out = fn(*args)
        except Exception as exc:
            if not _ignored(exc, ignore):
                log.error(str(exc), extra=extra)
                raise
            log.warning(str(exc), extra=extra)
            continue
        if out is not None and not sink:
            yield out


def _regulator_outputs(
    make: Any, init_kwargs: Any, items: Iterator[Any], ignore: Any, log: Any, extra: Any
) -> Iterator[Any]:
    coroutine = make(**init_kwargs)
    next(coroutine)
    for x in items:
        try:
            out = coroutine.send(x)
            while out is not None:
                yield out
                out = next(coroutine)
        except StopIteration:
            coroutine = make(**init_kwargs)  # Minipipe makes a new one for the next item
            next(coroutine)
        except Exception as exc:
            if not _ignored(exc, ignore):
                log.error(str(exc), extra=extra)
                raise
            log.warning(str(exc), extra=extra)
            coroutine = make(**init_kwargs)
            next(coroutine)


def _pair(n: int) -> Callable[[Iterator[tuple[int, Any]]], Iterator[tuple[Any, ...]]]:
    """One item from each of ``n`` tagged upstreams per output, in arrival order."""

    def body(tagged: Iterator[tuple[int, Any]]) -> Iterator[tuple[Any, ...]]:
        waiting: list[deque[Any]] = [deque() for _ in range(n)]
        for index, x in tagged:
            waiting[index].append(x)
            if all(waiting):
                yield tuple(q.popleft() for q in waiting)

    return body


def _dealer(weights: list[int]) -> Callable[[Any], int]:
    """Deals items to reader groups in turn, ``weights[i]`` items to group i per round."""
    turns = itertools.cycle([i for i, w in enumerate(weights) for _ in range(w)])
    return lambda _item: next(turns)


def _entries(n: int) -> Callable[[Any], list[int]]:
    def which(out: Any) -> list[int]:
        return [i for i, v in zip(range(n), out, strict=False) if v is not None]

    return which


def _tag(i: int) -> Callable[[Any], tuple[int, Any]]:
    return lambda x: (i, x)


def _entry(i: int) -> Callable[[Any], Any]:
    return lambda out: out[i]


# --- the systems ---------------------------------------------------------------------------


class PipeSystem:
    """Segments joined by streams in any topology, run on headrace.

    Parameters
    ----------
    pipes : list of segments
        Their order does not matter. Identical segments (same functor, upstreams and
        downstreams) form one stage with one worker each; readers of one stream compete.
    backend : {"process", "thread"}, keyword-only
        Where segments run (headrace extension; Minipipe used processes).
    **run_options
        headrace run options (``progress``, ``seed``, ``start_method``, ``memory``).

    Examples
    --------
    >>> from headrace.compat.minipipe import PipeSystem, Sink, Source, Stream, Transform
    >>> out = []
    >>> s1, s2 = Stream(), Stream()
    >>> psys = PipeSystem(
    ...     [
    ...         Sink(out.append, "keep", upstreams=[s2]),
    ...         Source(lambda: iter(range(4)), "numbers", downstreams=[s1]),
    ...         Transform(lambda x: x * 10, "times10", upstreams=[s1], downstreams=[s2]),
    ...     ],
    ...     backend="thread",
    ... )
    >>> psys.build()
    >>> psys.run()
    >>> psys.close()
    >>> sorted(out)
    [0, 10, 20, 30]
    """

    def __init__(self, pipes: list[Pipe], *, backend: str = "process", **run_options: Any):
        for pipe in pipes:
            if not isinstance(pipe, Pipe):
                raise TypeError(f"PipeSystem takes segments (Source, Transform, ...), got {pipe!r}")
        self.pipes = pipes
        self.backend = backend
        self.run_options = run_options
        self.built = False
        self.monitor = False
        self._terminals: list[hr.Stream] = []
        self._thread: threading.Thread | None = None
        self._finished = threading.Event()  # set by each run's thread at its end
        self._error: BaseException | None = None
        self._report: hr.Report | None = None
        self._ran = False

    def build(
        self,
        log_lvl: str = "INFO",
        monitor: bool = False,
        ignore_exceptions: list[type[BaseException]] | None = None,
    ) -> None:
        """Connect the segments into a headrace graph (nothing runs yet)."""
        if str(log_lvl).upper() not in LOG_LEVELS:
            raise ValueError(f"log_lvl must be one of {LOG_LEVELS}, got {log_lvl!r}")
        self.log_lvl = str(log_lvl).upper()
        self.monitor = monitor or any(s.monitor for p in self.pipes for s in _streams_of(p))
        logger = logging.getLogger(LOGGER)
        logger.setLevel(self.log_lvl)
        if not logger.handlers and not logging.getLogger().handlers:
            handler = logging.StreamHandler()  # Minipipe logs to stderr out of the box
            handler.setFormatter(logging.Formatter(LOG_FORMAT))
            logger.addHandler(handler)
        if ignore_exceptions is not None:
            for pipe in self.pipes:
                pipe.ignore_exceptions = list(ignore_exceptions)
        self._terminals = _Graph(self, logging.getLevelName(self.log_lvl)).terminals()
        self.built = True

    def run(self) -> None:
        """Start the run (in a background thread); `close` waits for its end."""
        if not self.built:
            self.build()
        if self._ran:
            raise hr.HeadraceError("this system has run already: call reset() to run it again")
        self._ran, self._error = True, None
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name="minipipe-run", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._report = hr.run(*self._terminals, **self.run_options)
        except BaseException as exc:
            self._error = exc
            return
        finally:
            self._finished.set()
        if self.monitor:
            logging.getLogger(LOGGER).info(
                "figures of the run:\n%s", self._report.table(), extra={"pname": "PipeSystem"}
            )

    def close(self) -> None:
        """Wait for the run to end; raise the first error a segment raised."""
        if self._thread is not None:
            # Short waits see Ctrl-C at once. On an event, not `Thread.join(0.1)`: CPython 3.11
            # marks a thread as ended when a signal's exception interrupts a join on it, so a
            # second `close` (or `reset`) would return while the run still goes.
            while not self._finished.wait(0.1):
                pass
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def reset(self) -> None:
        """Make the system ready to run again."""
        self.close()
        self._ran = False

    def report(self) -> hr.Report | None:
        """The headrace report of the last run (headrace extension)."""
        return self._report

    def diagram(self, draw_streams: bool = False) -> Any:
        """A ``graphviz.Digraph`` of the segments (and the streams with ``draw_streams``)."""
        if not self.built:
            raise hr.HeadraceError("build() the system before drawing its diagram")
        try:
            import graphviz
        except ImportError as exc:
            raise ImportError('diagram() needs graphviz: pip install "headrace[graphviz]"') from exc
        graph = graphviz.Digraph()
        names = _unique_names(self.pipes)
        for pipe in self.pipes:
            graph.node(str(id(pipe)), names[id(pipe)])
        edges: set[tuple[str, str]] = set()
        drawn: set[int] = set()
        for pipe in self.pipes:
            for stream in pipe.downstreams:
                readers = [p for p in self.pipes if _has(p.upstreams, stream)]
                if draw_streams:
                    if id(stream) not in drawn:
                        drawn.add(id(stream))
                        graph.node(str(id(stream)), stream.name, shape="rectangle")
                    edges.add((str(id(pipe)), str(id(stream))))
                    edges.update((str(id(stream)), str(id(r))) for r in readers)
                else:
                    edges.update((str(id(pipe)), str(id(r))) for r in readers)
        for edge in sorted(edges):
            graph.edge(*edge)
        return graph

    def to_dot(self) -> str:
        """Graphviz DOT text of the headrace graph this system runs as (headrace extension)."""
        if not self.built:
            self.build()
        return hr.to_dot(*self._terminals)


def _streams_of(pipe: Pipe) -> list[Stream]:
    return [*pipe.upstreams, *pipe.downstreams]


def _unique_names(pipes: list[Pipe]) -> dict[int, str]:
    """Minipipe's names: a name used by several segments gets ``_0``, ``_1``, ..."""
    count: dict[str, int] = {}
    for pipe in pipes:
        count[pipe.name] = count.get(pipe.name, 0) + 1
    seen: dict[str, int] = {}
    names = {}
    for pipe in pipes:
        if count[pipe.name] > 1:
            names[id(pipe)] = f"{pipe.name}_{seen.get(pipe.name, 0)}"
            seen[pipe.name] = seen.get(pipe.name, 0) + 1
        else:
            names[id(pipe)] = pipe.name
    return names


class _Graph:
    """Compiles a system's segments to headrace streams (one build)."""

    def __init__(self, system: PipeSystem, level: int) -> None:
        self.system, self.level = system, level
        groups: dict[tuple[Any, ...], list[Pipe]] = {}
        for pipe in system.pipes:
            key = (
                type(pipe),
                id(pipe.functor_obj),
                tuple(map(id, pipe.upstreams)),
                tuple(map(id, pipe.downstreams)),
            )
            groups.setdefault(key, []).append(pipe)
        self.groups = list(groups.values())
        labels = [g[0].name for g in self.groups]
        self.names = [
            f"{label}_{i}" if labels.count(label) > 1 else label for i, label in enumerate(labels)
        ]
        self.outputs: dict[int, list[hr.Stream]] = {}  # group -> a stream per downstream
        self.inputs: dict[tuple[int, int], hr.Stream] = {}  # (stream id, group) -> its share
        self.building: set[int] = set()

    def terminals(self) -> list[hr.Stream]:
        ends = []
        for g, group in enumerate(self.groups):
            outs = self.output(g)
            if not group[0].downstreams:
                ends.extend(outs)
            else:
                ends.extend(
                    out
                    for out, stream in zip(outs, group[0].downstreams, strict=True)
                    if not self.readers(stream)
                )
        return ends

    def readers(self, stream: Stream) -> list[int]:
        return [g for g, group in enumerate(self.groups) if _has(group[0].upstreams, stream)]

    def writers(self, stream: Stream) -> list[int]:
        return [g for g, group in enumerate(self.groups) if _has(group[0].downstreams, stream)]

    def share(self, stream: Stream, g: int) -> hr.Stream:
        """The items of ``stream`` that group ``g`` reads."""
        key = (id(stream), g)
        if key not in self.inputs:
            writers = self.writers(stream)
            if not writers:
                raise hr.GraphError(f"stream {stream.name!r} has no segment writing to it")
            parts = [self.output(w)[_index(self.groups[w][0].downstreams, stream)] for w in writers]
            merged = parts[0] if len(parts) == 1 else hr.merge(*parts, name=f"{stream.name}")
            readers = self.readers(stream)
            if len(readers) == 1:
                self.inputs[key] = merged
            else:
                weights = [sum(p._workers for p in self.groups[r]) for r in readers]
                branches = merged.route(
                    _dealer(weights), len(readers), backend="inline", name=f"{stream.name}:deal"
                )
                for r, branch in zip(readers, branches, strict=True):
                    self.inputs[(id(stream), r)] = branch
        return self.inputs[key]

    def output(self, g: int) -> list[hr.Stream]:
        if g in self.outputs:
            return self.outputs[g]
        if g in self.building:
            raise hr.GraphError(f"segment {self.names[g]!r} feeds itself: Minipipe graphs are DAGs")
        self.building.add(g)
        pipe, system = self.groups[g][0], self.system
        ups = pipe.upstreams
        if pipe.kind == "source":
            stream = hr.from_iterable([None], name=f"{self.names[g]}:start")
        elif not ups:
            raise hr.GraphError(f"segment {self.names[g]!r} has no upstreams to read from")
        elif len(ups) == 1:
            stream = self.share(ups[0], g)
        else:
            tagged = [self.share(s, g).map(_tag(i), backend="inline") for i, s in enumerate(ups)]
            stream = hr.merge(*tagged).transform(
                _pair(len(ups)), backend="inline", name=f"{self.names[g]}:pair"
            )
        downs = pipe.downstreams
        workers = sum(p._workers for p in self.groups[g])
        # buffer_size bounds a Minipipe queue of single items; headrace moves items in chunks
        # and bounds its channels in bytes too, so a smaller bound only slows it down.
        buffer = max((s.buffer_size for s in downs), default=0)
        options: dict[str, Any] = {
            "workers": workers,
            "backend": system.backend,
            "name": self.names[g],
            "maxsize": buffer if buffer > CHANNEL_FLOOR else None,
        }
        if isinstance(pipe.functor_obj, Iterator):
            options["backend"] = "thread"  # a generator made here cannot move to a process
        ignore = tuple(pipe.ignore_exceptions)
        functor = pipe.functor_obj
        if pipe.kind in ("transform", "sink") and not _stateful(functor):
            call = _per_item(functor, self.names[g], ignore, self.level, len(ups))
            if pipe.kind == "sink":
                out = stream.sink(call, **options)
            else:
                out = stream.map(call, **options).filter(
                    _not_none, backend="inline", name=f"{self.names[g]}:drop None"
                )
        else:
            body = _segment_body(
                pipe.kind, functor, pipe.init_kwargs, self.names[g], ignore, self.level, len(ups)
            )
            out = stream.transform(body, **options)
        if len(downs) <= 1:
            outs = [out]
        else:
            routed = out.route(
                _entries(len(downs)), len(downs), backend="inline", name=f"{self.names[g]}:split"
            )
            outs = [
                b.map(_entry(i), backend="inline", name=f"{self.names[g]}->{downs[i].name}")
                for i, b in enumerate(routed)
            ]
        self.outputs[g] = outs
        self.building.discard(g)
        return outs


def _has(streams: list[Stream], stream: Stream) -> bool:
    return any(s is stream for s in streams)


def _index(streams: list[Stream], stream: Stream) -> int:
    return next(i for i, s in enumerate(streams) if s is stream)


class PipeLine(PipeSystem):
    """A linear system: each `add` puts a segment after the previous one.

    Examples
    --------
    >>> from headrace.compat.minipipe import PipeLine, Sink, Source, Transform
    >>> out = []
    >>> pline = PipeLine(backend="thread")
    >>> pline.add(Source(lambda: iter(range(3)), "numbers"))
    >>> pline.add(Transform(lambda x: x + 1, "plus1"), n_processes=2)
    >>> pline.add(Sink(out.append, "keep"))
    >>> pline.build()
    >>> pline.run()
    >>> pline.close()
    >>> sorted(out)
    [1, 2, 3]
    """

    def __init__(
        self,
        monitor: bool = False,
        queue_type: str = "multiprocessing.Queue",
        *,
        backend: str = "process",
        **run_options: Any,
    ) -> None:
        super().__init__([], backend=backend, **run_options)
        self.monitor = monitor
        self.queue_type = _check_queue_type(queue_type)
        self.segments: list[Pipe] = []

    def add(self, pipe: Pipe, n_processes: int = 1, buffer_size: int = 3) -> None:
        """Add ``pipe`` after the last segment, on ``n_processes`` workers, joined to it by a
        stream of ``buffer_size`` items."""
        if isinstance(n_processes, bool) or not isinstance(n_processes, int) or n_processes < 1:
            raise ValueError(f"n_processes must be an integer >= 1, got {n_processes!r}")
        if isinstance(pipe, Source) and n_processes > 1:
            raise ValueError("a Source runs on one process; use PipeSystem for several sources")
        if self.segments:
            stream = Stream(
                name=f"stream_{len(self.segments) - 1}",
                buffer_size=buffer_size,
                monitor=self.monitor,
                queue_type=self.queue_type,
            )
            self.segments[-1].set_downstreams([stream])
            pipe.set_upstreams([stream])
        pipe._workers = n_processes
        self.segments.append(pipe)
        self.pipes.append(pipe)
        self.built = False
