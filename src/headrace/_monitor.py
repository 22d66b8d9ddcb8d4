"""What a run reports about itself: the final `Report` and the live `Progress` display.

Owns: `Report` (figures of a finished run, its bottleneck, its table, dict and DOT views) and
`Progress` (per-stage lines refreshed on stderr while a run goes). Imports only `_errors`,
`_types` and the standard library at module level; `rich` is optional and imported only by
`Progress`, when it starts or renders.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from headrace._errors import ClosedError
from headrace._records import ErrorRecord, StageSnapshot
from headrace._transport import Daemon

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["Progress", "Report", "render_dot"]

logger = logging.getLogger("headrace")

#: Error records listed by `Report.table`; the rest are counted. Ten fit on one screen next to
#: the stage table and usually show every distinct failure.
MAX_TABLE_ERRORS = 10

#: Longest error message shown on one line of `Report.table`: one terminal line (80 columns).
MAX_TABLE_MESSAGE = 80

#: Seconds between two refreshes of the progress display: fast enough to look live, slow
#: enough that rendering costs nothing next to a run (rich's own default is 4 per second).
PROGRESS_INTERVAL_S = 0.2
#: How long `stop` waits for the display's thread to draw its last frame and end.
STOP_WAIT_S = 5.0

#: Keys every stage dict of `Report.to_dict` starts with (DESIGN.md §2.2: these may not change).
_STAGE_KEYS = (
    "name",
    "backend",
    "workers",
    "items_in",
    "items_out",
    "errors",
    "busy_s",
    "starved_s",
    "blocked_s",
    "items_per_s",
    "peak_fill",
)

#: Seconds between two plain progress lines (no rich): often enough to show a run is alive,
#: seldom enough that a log of a long run stays readable.
PLAIN_INTERVAL_S = 2.0

_RICH_MISSING = (
    'headrace: the live progress table needs the "rich" package (pip install '
    '"headrace[progress]"); showing a plain line every {interval:g} s instead'
)


def _utilisation(stage: StageSnapshot, wall_s: float) -> float:
    """Share of its workers' time the stage spent busy (0 when the run took no time)."""
    if wall_s <= 0:
        return 0.0
    return stage.busy_s / (max(stage.workers, 1) * wall_s)


def _rate(items_per_s: float) -> str:
    """Items per second, readable at any scale: 12.5, 12,345, 1.23M."""
    if items_per_s < 100:
        return f"{items_per_s:.1f}"
    if items_per_s < 1e6:
        return f"{items_per_s:,.0f}"
    if items_per_s < 1e9:
        return f"{items_per_s / 1e6:.2f}M"
    return f"{items_per_s / 1e9:.2f}G"


def _fill(fill: int, capacity: int) -> str:
    return f"{fill}/{capacity}" if capacity > 0 else f"{fill}/-"


def _one_line(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Report:
    """Figures of a finished run: wall time, per-stage counters, errors, the bottleneck.

    Built by the library at the end of a run (``stream.run()``, ``hr.run(...)``,
    ``run.report()``); users read it.

    Parameters
    ----------
    wall_s : float
        Seconds from the start of the run to its end.
    stages : sequence of StageSnapshot
        One snapshot per stage, in graph order.
    errors : sequence of ErrorRecord
        Records of the items that failed and were skipped.
    dot : callable, optional
        Renders the run's graph as Graphviz DOT text annotated with this report; without it
        `to_dot` raises.

    Attributes
    ----------
    wall_s : float
    stages : tuple of StageSnapshot
    errors : tuple of ErrorRecord
    bottleneck : str or None
        Name of the stage that kept its workers busiest (``busy_s / (workers * wall_s)``),
        among stages with some busy time; None when no stage was busy or ``wall_s`` is 0.

    Examples
    --------
    >>> from headrace._records import StageSnapshot
    >>> read = StageSnapshot(
    ...     name="read",
    ...     kind="map",
    ...     backend="thread",
    ...     workers=2,
    ...     items_in=100,
    ...     items_out=100,
    ...     completed=100,
    ...     dropped=0,
    ...     errors=0,
    ...     cancelled=0,
    ...     busy_s=0.5,
    ...     starved_s=0.0,
    ...     blocked_s=3.1,
    ...     items_per_s=50.0,
    ...     fill=0,
    ...     peak_fill=8,
    ...     capacity=8,
    ...     done=True,
    ... )
    >>> parse = StageSnapshot(
    ...     name="parse",
    ...     kind="map",
    ...     backend="process",
    ...     workers=4,
    ...     items_in=100,
    ...     items_out=100,
    ...     completed=100,
    ...     dropped=0,
    ...     errors=0,
    ...     cancelled=0,
    ...     busy_s=7.5,
    ...     starved_s=0.2,
    ...     blocked_s=0.0,
    ...     items_per_s=50.0,
    ...     fill=0,
    ...     peak_fill=16,
    ...     capacity=16,
    ...     done=True,
    ... )
    >>> report = Report(2.0, [read, parse], [])
    >>> report.bottleneck
    'parse'
    >>> report.stage("read").blocked_s
    3.1
    >>> report.to_dict()["stages"][1]["busy_s"]
    7.5
    >>> print(report.table())
    headrace report: wall 2.00 s, 2 stages, 0 errors
      stage  backend  workers   in  out  errors  busy s  starved s  blocked s  items/s  peak fill
      -----  -------  -------  ---  ---  ------  ------  ---------  ---------  -------  ---------
      read   thread         2  100  100       0    0.50       0.00       3.10     50.0        8/8
    * parse  process        4  100  100       0    7.50       0.20       0.00     50.0      16/16
    bottleneck: parse (busy 94% of its workers' time)
    """

    __slots__ = ("_by_name", "_dot", "bottleneck", "errors", "stages", "wall_s")

    def __init__(
        self,
        wall_s: float,
        stages: Sequence[StageSnapshot],
        errors: Sequence[ErrorRecord],
        dot: Callable[[Report], str] | None = None,
    ) -> None:
        self.wall_s = float(wall_s)
        self.stages = tuple(stages)
        self.errors = tuple(errors)
        self._dot = dot
        self._by_name: dict[str, StageSnapshot] = {}
        for stage in self.stages:
            self._by_name.setdefault(stage.name, stage)
        busy = [s for s in self.stages if s.busy_s > 0]
        self.bottleneck: str | None = None
        if busy and self.wall_s > 0:
            # max keeps the first of equals: the earliest stage in graph order wins a tie.
            self.bottleneck = max(busy, key=lambda s: _utilisation(s, self.wall_s)).name

    def stage(self, name: str) -> StageSnapshot:
        """The snapshot of the stage called ``name``.

        Raises
        ------
        KeyError
            No stage has that name; the message lists the stages there are.

        Examples
        --------
        >>> Report(1.0, [], []).stage("decode")
        Traceback (most recent call last):
        ...
        KeyError: "no stage named 'decode' in this report; its stages are: (none)"
        """
        try:
            return self._by_name[name]
        except KeyError:
            known = ", ".join(repr(n) for n in self._by_name) or "(none)"
            raise KeyError(
                f"no stage named {name!r} in this report; its stages are: {known}"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data, ready for ``json.dumps``.

        Layout (a stable contract: keys may be added, these will not change)::

            {"wall_s": float, "bottleneck": str | None,
             "stages": [{"name", "backend", "workers", "items_in", "items_out", "errors",
                         "busy_s", "starved_s", "blocked_s", "items_per_s", "peak_fill",
                         ...the other StageSnapshot fields...}, ...],
             "errors": [{"stage", "index", "type", "message", "traceback"}, ...]}

        Examples
        --------
        >>> Report(0.5, [], []).to_dict()
        {'wall_s': 0.5, 'bottleneck': None, 'stages': [], 'errors': []}
        """
        stages = []
        for stage in self.stages:
            fields = stage.to_dict()
            ordered = {key: fields.pop(key) for key in _STAGE_KEYS}
            ordered.update(fields)
            stages.append(ordered)
        return {
            "wall_s": self.wall_s,
            "bottleneck": self.bottleneck,
            "stages": stages,
            "errors": [record.to_dict() for record in self.errors],
        }

    def table(self) -> str:
        """The report as a fixed-width text table for a terminal.

        One row per stage, the bottleneck marked with ``*`` and explained below the table,
        then up to ten error records.

        Examples
        --------
        >>> print(Report(0.0, [], []).table())
        headrace report: wall 0.00 s, 0 stages, 0 errors
          stage  backend  workers  in  out  errors  busy s  starved s  blocked s  items/s  peak fill
          -----  -------  -------  --  ---  ------  ------  ---------  ---------  -------  ---------
        bottleneck: none (no stage was busy)
        """
        header = (
            "stage",
            "backend",
            "workers",
            "in",
            "out",
            "errors",
            "busy s",
            "starved s",
            "blocked s",
            "items/s",
            "peak fill",
        )
        left = {0, 1}  # text columns; the figures align right
        rows = [
            (
                s.name,
                s.backend,
                f"{s.workers:,}",
                f"{s.items_in:,}",
                f"{s.items_out:,}",
                f"{s.errors:,}",
                f"{s.busy_s:,.2f}",
                f"{s.starved_s:,.2f}",
                f"{s.blocked_s:,.2f}",
                _rate(s.items_per_s),
                _fill(s.peak_fill, s.capacity),
            )
            for s in self.stages
        ]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

        def line(mark: str, cells: Sequence[str]) -> str:
            text = "  ".join(
                c.ljust(w) if i in left else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            return f"{mark} {text}".rstrip()

        n_errors = len(self.errors)
        out = [
            f"headrace report: wall {self.wall_s:.2f} s, {len(self.stages)} "
            f"stage{'' if len(self.stages) == 1 else 's'}, {n_errors} "
            f"error{'' if n_errors == 1 else 's'}",
            line(" ", header),
            line(" ", ["-" * w for w in widths]),
        ]
        out += [
            line("*" if s.name == self.bottleneck else " ", row)
            for s, row in zip(self.stages, rows, strict=True)
        ]
        if self.bottleneck is None:
            out.append("bottleneck: none (no stage was busy)")
        else:
            share = _utilisation(self._by_name[self.bottleneck], self.wall_s)
            out.append(f"bottleneck: {self.bottleneck} (busy {share:.0%} of its workers' time)")
        if self.errors:
            out.append(f"errors (items skipped): {n_errors}")
            for record in self.errors[:MAX_TABLE_ERRORS]:
                where = "setup" if record.index is None else f"item {record.index}"
                text = _one_line(f"{record.type}: {record.message}", MAX_TABLE_MESSAGE)
                out.append(f"  {record.stage}, {where}: {text}")
            if n_errors > MAX_TABLE_ERRORS:
                out.append(f"  ... and {n_errors - MAX_TABLE_ERRORS} more")
        return "\n".join(out)

    def to_dot(self) -> str:
        """Graphviz DOT text of the run's graph, annotated with this report's figures.

        Raises
        ------
        ValueError
            The report was built without its graph (no ``dot`` callable).

        Examples
        --------
        >>> Report(1.0, [], [], dot=lambda report: "digraph { }").to_dot()
        'digraph { }'
        """
        if self._dot is None:
            raise ValueError(
                "this report has no graph attached, so it cannot be drawn; use the report "
                "returned by stream.run(), hr.run() or run.report(), or stream.to_dot()"
            )
        return self._dot(self)

    def render(self, path: str | os.PathLike[str], *, format: str | None = None) -> Path:
        """Draw the run's graph, annotated with this report's figures, into the file ``path``.

        The format comes from the file's suffix (``.svg``, ``.png``, ``.pdf``...) unless
        ``format`` is given; ``.dot`` / ``.gv`` write the DOT text itself. Other formats need
        the ``graphviz`` package (``pip install "headrace[graphviz]"``) and Graphviz's ``dot``
        program on the ``PATH``.

        Returns
        -------
        pathlib.Path
            The file written.

        Raises
        ------
        ImportError
            The ``graphviz`` package is not installed.
        RuntimeError
            Graphviz's ``dot`` program is not installed (the message says how to get it).

        Examples
        --------
        >>> import headrace as hr, pathlib, tempfile
        >>> report = hr.from_iterable(range(3)).map(abs).run()
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = report.render(pathlib.Path(folder, "run.dot"))
        ...     path.read_text().startswith("digraph")
        True
        """
        return render_dot(self.to_dot(), path, format=format)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return (
            f"<Report wall_s={self.wall_s:.3f} stages={len(self.stages)} "
            f"errors={len(self.errors)} bottleneck={self.bottleneck!r}>"
        )


class Progress:
    """Live per-stage progress lines on stderr while a run goes (``progress=True``).

    One daemon thread, ``headrace-progress``, asks ``snapshot()`` for the figures every
    ``interval`` seconds and redraws a small table with `rich`. When the file is not a
    terminal, only the final state is written, by `stop`. Without rich, it says how to install
    it and writes one plain line of figures every ``plain_interval`` seconds, and the final one.

    Parameters
    ----------
    snapshot : callable
        Returns ``(elapsed_s, stages)``: seconds since the run started and one
        `StageSnapshot` per stage, in graph order. Called from the progress thread.
    file : text file, optional
        Where to draw; ``sys.stderr`` as it is when `start` is called by default.
    interval : float
        Seconds between two refreshes.
    plain_interval : float
        Seconds between two plain lines, when rich is not installed.

    Examples
    --------
    >>> import io
    >>> from headrace._records import StageSnapshot
    >>> read = StageSnapshot(
    ...     name="read",
    ...     kind="map",
    ...     backend="thread",
    ...     workers=2,
    ...     items_in=10,
    ...     items_out=10,
    ...     completed=10,
    ...     dropped=0,
    ...     errors=0,
    ...     cancelled=0,
    ...     busy_s=0.5,
    ...     starved_s=0.0,
    ...     blocked_s=0.1,
    ...     items_per_s=20.0,
    ...     fill=0,
    ...     peak_fill=3,
    ...     capacity=8,
    ...     done=True,
    ... )
    >>> out = io.StringIO()
    >>> progress = Progress(lambda: (0.5, [read]), file=out)
    >>> progress.start()
    >>> progress.stop()
    >>> "read" in out.getvalue()
    True
    """

    def __init__(
        self,
        snapshot: Callable[[], tuple[float, Sequence[StageSnapshot]]],
        *,
        file: TextIO | None = None,
        interval: float = PROGRESS_INTERVAL_S,
        plain_interval: float = PLAIN_INTERVAL_S,
    ) -> None:
        for arg, value in (("interval", interval), ("plain_interval", plain_interval)):
            if value <= 0:
                raise ValueError(f"{arg} must be a positive number of seconds, got {value!r}")
        self._snapshot = snapshot
        self._file = file
        self._interval = interval
        self._plain_interval = plain_interval
        self._plain = False  # True when rich is missing: plain lines instead of a table
        self._wake = threading.Event()
        self._thread: Daemon | None = None
        # A rich.live.Live once started. Typed Any because rich is optional: naming its type
        # here would import it at module level.
        self._live: Any = None
        self._stopped = False
        self._warned = False

    def start(self) -> None:
        """Draw the first state and start refreshing it.

        Raises
        ------
        ClosedError
            `stop` was called already.
        RuntimeError
            The display is running already.
        """
        if self._stopped:
            raise ClosedError("this progress display was stopped; make a new one to draw again")
        if self._thread is not None:
            raise RuntimeError("this progress display is running already")
        file = self._file if self._file is not None else sys.stderr
        try:
            from rich.console import Console
            from rich.live import Live
        except ImportError:
            self._start_plain(file)
            return
        live = Live(
            self._render(*self._snapshot()),
            console=Console(file=file),
            auto_refresh=False,  # our thread refreshes; rich's own would be a second thread
        )
        live.start(refresh=True)
        self._live = live
        self._thread = Daemon(self._loop, (), "headrace-progress")
        self._thread.start()

    def _start_plain(self, file: TextIO) -> None:
        self._plain = True
        self._live = file
        print(_RICH_MISSING.format(interval=self._plain_interval), file=file, flush=True)
        self._thread = Daemon(self._loop, (), "headrace-progress")
        self._thread.start()

    def stop(self) -> None:
        """Draw the final state once, stop the display and join its thread.

        Safe to call twice, and without `start`.
        """
        self._stopped = True
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._wake.set()
        thread.wait_end(STOP_WAIT_S)  # not a plain join: see `Daemon`
        if self._plain:
            file, self._live = self._live, None
            print(_plain_line(*self._snapshot()), file=file, flush=True)
            return
        live, self._live = self._live, None
        try:
            live.update(self._render(*self._snapshot()))
        finally:
            live.stop()  # draws the last update, also when the file is not a terminal

    def _loop(self) -> None:
        interval = self._plain_interval if self._plain else self._interval
        while not self._wake.wait(interval):
            try:
                if self._plain:
                    print(_plain_line(*self._snapshot()), file=self._live, flush=True)
                else:
                    self._live.update(self._render(*self._snapshot()), refresh=True)
            except Exception:
                # A display must never break the run: say it once, keep the last frame.
                if not self._warned:
                    self._warned = True
                    logger.warning("progress display could not refresh", exc_info=True)

    def _render(self, elapsed_s: float, stages: Sequence[StageSnapshot]) -> Any:
        """A rich table of the stages (a rich renderable; Any keeps rich out of the types)."""
        from rich.box import SIMPLE_HEAD
        from rich.table import Table

        # No fill bar: the table must fit the 80 columns rich assumes for a file.
        table = Table(
            title=f"headrace  {elapsed_s:.1f} s",
            title_justify="left",
            box=SIMPLE_HEAD,
            pad_edge=False,
        )
        table.add_column("stage", overflow="ellipsis")
        for name in ("workers", "in", "out", "errors", "items/s", "fill"):
            table.add_column(name, justify="right", no_wrap=True)
        table.add_column("done", no_wrap=True)
        for s in stages:
            table.add_row(
                s.name,
                f"{s.workers:,}",
                f"{s.items_in:,}",
                f"{s.items_out:,}",
                f"{s.errors:,}",
                _rate(s.items_per_s),
                _fill(s.fill, s.capacity),
                "done" if s.done else "",
            )
        return table


def _plain_line(elapsed_s: float, stages: Sequence[StageSnapshot]) -> str:
    """One line of figures per call, for a display without rich.

    Examples
    --------
    >>> from headrace._records import StageSnapshot
    >>> fields = dict(kind="map", backend="thread", workers=1, items_in=5, completed=5)
    >>> fields |= dict(dropped=0, cancelled=0, busy_s=0.1, starved_s=0.0, blocked_s=0.0)
    >>> fields |= dict(items_per_s=50.0, fill=0, peak_fill=1, capacity=8)
    >>> a = StageSnapshot(name="read", items_out=5, errors=0, done=True, **fields)
    >>> b = StageSnapshot(name="parse", items_out=3, errors=2, done=False, **fields)
    >>> _plain_line(1.5, [a, b])
    'headrace 1.5 s: read 5 out (done); parse 3 out, 2 errors, 50.0/s'
    """
    parts = []
    for s in stages:
        text = f"{s.name} {s.items_out:,} out"
        if s.errors:
            text += f", {s.errors:,} error{'' if s.errors == 1 else 's'}"
        text += " (done)" if s.done else f", {_rate(s.items_per_s)}/s"
        parts.append(text)
    return f"headrace {elapsed_s:.1f} s: " + "; ".join(parts)


#: File suffixes that mean the DOT text itself, written without Graphviz.
DOT_SUFFIXES = frozenset({"dot", "gv"})

_GRAPHVIZ_MISSING = (
    'drawing a graph needs the "graphviz" package: pip install "headrace[graphviz]" '
    "(or write the DOT text with to_dot(), or to a .dot path)"
)
_DOT_MISSING = (
    "the graphviz package is installed, but Graphviz's 'dot' program, which draws the graph, "
    "is not on the PATH: install it with the system's package manager (apt install graphviz, "
    "dnf install graphviz, brew install graphviz, conda install graphviz); or write a .dot "
    "file, which needs no program"
)


def render_dot(dot: str, path: str | os.PathLike[str], *, format: str | None = None) -> Path:
    """Write ``dot`` into ``path`` drawn in ``format`` (default: the suffix of ``path``)."""
    from pathlib import Path  # here: a run's first set-up need not import it

    target = Path(path)
    fmt = (format or target.suffix.lstrip(".")).lower()
    if not fmt:
        raise ValueError(
            f"cannot tell the format of {str(target)!r}: give the file a suffix such as .svg "
            "or .png, or pass format="
        )
    if fmt in DOT_SUFFIXES:
        target.write_text(dot, encoding="utf-8")
        return target
    try:
        import graphviz
    except ImportError as exc:
        raise ImportError(_GRAPHVIZ_MISSING) from exc
    if fmt not in graphviz.FORMATS:
        known = ", ".join(sorted(graphviz.FORMATS & {"svg", "png", "pdf", "jpg", "dot"}))
        raise ValueError(f"Graphviz cannot draw format {fmt!r}; try one of {known}")
    try:
        drawn = graphviz.Source(dot).pipe(format=fmt)
    except graphviz.ExecutableNotFound as exc:
        raise RuntimeError(_DOT_MISSING) from exc
    target.write_bytes(drawn)
    return target
