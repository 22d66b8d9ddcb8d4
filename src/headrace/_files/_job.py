"""File jobs: many input files to as many outputs, in parallel, atomically, resumably.

Owns: `FileJob` (the functions, options and control keywords of a job; `run` and `stream`),
`FileResult` (one per input, in input order), and the plan of a run: output names checked
before any work starts, resume decisions from the manifest, stray temporaries removed. The
per-file work is in `_worker`; a stage of process workers runs it, and an inline stage in the
parent puts the results back in input order, names the files a dead worker held, and appends
each written output to the manifest. Imports the core (`_streams`, `_types`), no other domain.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from .._records import ErrorRecord
from .._run import parse_bytes
from .._streams import Stream, from_iterable
from .._types import BACKENDS
from ._atomic import remove_strays
from ._manifest import (
    Manifest,
    Record,
    control_fingerprint,
    file_state,
    job_fingerprint,
    jsonable_meta,
    still_valid,
)
from ._paths import UnsafePathError, find_clashes, resolve_output
from ._sizing import worker_count
from ._worker import FileTask, FileWorker, Outcome, error_record, read_bytes, write_bytes

#: Name of the stage of file workers, in reports and error records.
STAGE_NAME = "files"
STATUSES = ("written", "skipped", "rejected", "failed")


class FileResult(NamedTuple):
    """What became of one input file of a `FileJob`.

    ``status`` is ``"written"``, ``"skipped"`` (``resume=True`` found a valid output),
    ``"rejected"`` (a step returned ``None``) or ``"failed"``; ``output`` is the output's path
    when written or skipped, else ``None``; ``meta`` is the file's metadata (for a skipped
    file, the metadata recorded when it was written); ``error`` is the error record of a
    failed file (`ErrorRecord`: stage, index, type, message, traceback), else ``None``.

    Examples
    --------
    >>> import headrace as hr
    >>> r = hr.FileResult("in/a.npy", "out/a.npy", "written", {"mean": 1.5}, None)
    >>> r.status, r.meta["mean"]
    ('written', 1.5)
    """

    input: str
    output: str | None
    status: str
    meta: dict[str, Any]
    error: ErrorRecord | None

    @property
    def ok(self) -> bool:
        """True unless the file failed."""
        return self.status != "failed"


@dataclass
class _Plan:
    """What one run will do: a task per input still to do, results known up front."""

    tasks: list[FileTask]
    known: dict[int, FileResult]  # skipped files and files refused before the run
    inputs: list[str]
    sources: list[Path]
    outdir: Path
    relative: dict[int, str]
    job: str
    control: str


def _check_functions(name: str, fns: Any) -> list[Callable[..., Any]]:
    if fns is None:
        return []
    if callable(fns):
        fns = [fns]
    try:
        found = list(fns)
    except TypeError:
        raise TypeError(f"{name} must be a list of callables, got {type(fns).__name__}") from None
    for fn in found:
        if not callable(fn):
            raise TypeError(f"{name} must hold callables, got {type(fn).__name__}")
    return found


class FileJob:
    """A batch job that turns input files into output files on parallel workers.

    Each file goes read -> ``pre`` steps -> ``process`` -> ``post`` steps -> ``meta``
    functions -> write, inside one worker; only paths and the small metadata dict cross
    processes. Every function receives all control keywords (so each should accept
    ``**control``): those given here, overridden by those given to `run`, plus any that an
    earlier step of the same file handed on with `FileStep`.

    Parameters
    ----------
    process : callable or None
        ``process(data, **control) -> data``; like every step, returning ``None`` rejects
        the file (nothing is written) and returning a `FileStep` hands keywords or metadata on.
    read : callable, optional
        ``read(path, **control) -> data`` (default: the file's bytes; ``None`` rejects).
    write : callable, optional
        ``write(data, path, **control)`` (default: bytes to the file). It must write to exactly
        the path it is given: a temporary name beside the output that keeps the output's
        suffix, renamed into place once written and flushed.
    pre, post : list of callables, optional
        Steps before and after ``process``, with the same signature.
    meta : list of callables, optional
        ``meta(data, **control) -> dict``, called on the final data just before it is
        written; the dicts are merged into the file's metadata.
    outname : callable, optional
        ``outname(input_path, **control) -> str``: the output's name inside ``outdir``
        (default: the input's base name). Names that would leave ``outdir`` (absolute, ``..``,
        through a symlink) make that file fail; two inputs with one output name, or an output
        that is an input, are refused before any work starts.
    worker_memory : int or str, optional
        Bytes one worker may need (``"2GiB"``): the worker count is capped so that the workers
        fit in 80% of the available memory. Default: three times the largest input.
    workers : int, optional
        At most this many workers (default: the cores; never more than the files).
    backend : {"process", "thread", "inline"}
        Where the workers run.
    fsync : bool
        Flush each output to the disk before renaming it into place (default False). Without
        it an output is still never seen half-written after a crash of any process; with it,
        also not after a power loss or a crash of the operating system.
    **control
        Control keywords passed to every function.

    Examples
    --------
    >>> import headrace as hr, numpy as np, tempfile, os, shutil
    >>> folder = tempfile.mkdtemp()
    >>> paths = []
    >>> for i in range(3):
    ...     paths.append(os.path.join(folder, f"in{i}.npy"))
    ...     np.save(paths[-1], np.full(4, float(i)))
    >>> def skip_zeros(data, **control):
    ...     return None if not data.any() else data
    >>> job = hr.FileJob(
    ...     lambda a, scale=1, **c: a * scale,
    ...     read=np.load,
    ...     write=lambda a, path, **c: np.save(path, a),
    ...     pre=[skip_zeros],
    ...     meta=[lambda a, **c: {"sum": float(a.sum())}],
    ...     backend="thread",
    ...     scale=10,
    ... )
    >>> results = job.run(paths, os.path.join(folder, "out"))
    >>> [(r.status, r.meta) for r in results]
    [('rejected', {}), ('written', {'sum': 40.0}), ('written', {'sum': 80.0})]
    >>> [r.status for r in job.run(paths, os.path.join(folder, "out"), resume=True)]
    ['rejected', 'skipped', 'skipped']
    >>> shutil.rmtree(folder)
    """

    def __init__(
        self,
        process: Callable[..., Any] | None,
        *,
        read: Callable[..., Any] | None = None,
        write: Callable[..., Any] | None = None,
        pre: Sequence[Callable[..., Any]] | None = None,
        post: Sequence[Callable[..., Any]] | None = None,
        meta: Sequence[Callable[..., Any]] | None = None,
        outname: Callable[..., Any] | None = None,
        worker_memory: int | str | None = None,
        workers: int | None = None,
        backend: str = "process",
        fsync: bool = False,
        **control: Any,
    ) -> None:
        if process is not None and not callable(process):
            raise TypeError(f"process must be callable or None, got {type(process).__name__}")
        for name, fn in (("read", read), ("write", write), ("outname", outname)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        _check_workers(workers)
        if worker_memory is not None:
            try:
                parse_bytes(worker_memory)
            except ValueError:
                raise ValueError(
                    "worker_memory must be a positive byte count such as 2_000_000_000 or "
                    f"'2GiB', got {worker_memory!r}"
                ) from None
        self.process = process
        self.read = read if read is not None else read_bytes
        self.write = write if write is not None else write_bytes
        self.pre = _check_functions("pre", pre)
        self.post = _check_functions("post", post)
        self.meta = _check_functions("meta", meta)
        self.outname = outname
        self.worker_memory = worker_memory
        self.workers = workers
        self.backend = backend
        self.fsync = bool(fsync)
        self.control = control

    def __repr__(self) -> str:
        name = getattr(self.process, "__qualname__", repr(self.process))
        return f"<FileJob {name} ({self.backend}, workers={self.workers})>"

    # --- running ----------------------------------------------------------------------------

    def run(
        self,
        inputs: Iterable[str | os.PathLike[str]],
        outdir: str | os.PathLike[str],
        *,
        resume: bool = False,
        progress: bool = False,
        workers: int | None = None,
        **control: Any,
    ) -> list[FileResult]:
        """Process every input; one `FileResult` per input, in input order.

        ``resume=True`` skips an input whose output a manifest in ``outdir`` records as
        written from the same input (path, size, mtime) by the same job code with the same
        control keywords, and unchanged since; everything else is redone. ``progress=True``
        shows live figures on stderr. ``workers`` caps the worker count of this run;
        ``control`` overrides the job's control keywords.
        """
        plan = self._plan(inputs, outdir, resume=resume, control=control)
        stream = self._stream_of(plan, workers=workers, control=control)
        with stream.open(progress=progress) as execution:
            results: list[FileResult] = list(execution)
        report = execution.report()
        # The stage numbers its items by position among the files it ran, not among inputs.
        crashes = {
            plan.tasks[e.index].index: e
            for e in report.errors
            if e.stage == STAGE_NAME and e.index is not None and e.index < len(plan.tasks)
        }
        results = [
            r._replace(error=dataclasses.replace(crashes[i], index=i))
            if i in crashes and r.status == "failed"
            else r
            for i, r in enumerate(results)
        ]
        Manifest(plan.outdir).compact(
            drop=[
                plan.relative[i]
                for i, r in enumerate(results)
                if r.status in ("failed", "rejected") and i in plan.relative
            ]
        )
        return results

    def stream(
        self,
        inputs: Iterable[str | os.PathLike[str]],
        outdir: str | os.PathLike[str],
        *,
        resume: bool = False,
        workers: int | None = None,
        **control: Any,
    ) -> Stream:
        """The same work as `run`, as a `Stream` of `FileResult` to compose with others.

        The files are planned (output names checked, resume decided, stray temporaries of
        earlier runs removed) when the stream is built; run it once.
        """
        plan = self._plan(inputs, outdir, resume=resume, control=control)
        return self._stream_of(plan, workers=workers, control=control)

    # --- planning ---------------------------------------------------------------------------

    def _merged(self, control: dict[str, Any]) -> dict[str, Any]:
        return {**self.control, **control}

    def fingerprint(self) -> str:
        """A digest of the job's code and options: a change makes ``resume`` redo outputs."""
        return job_fingerprint(
            {
                "process": self.process,
                "read": self.read,
                "write": self.write,
                "pre": self.pre,
                "post": self.post,
                "meta": self.meta,
                "outname": self.outname if self.outname is not None else "basename",
            }
        )

    def _plan(
        self,
        inputs: Iterable[str | os.PathLike[str]],
        outdir: str | os.PathLike[str],
        *,
        resume: bool,
        control: dict[str, Any],
    ) -> _Plan:
        if isinstance(inputs, (str, os.PathLike)):
            raise TypeError("inputs must be a list of paths, not one path; wrap it in a list")
        names = []
        for item in inputs:
            if not isinstance(item, (str, os.PathLike)):
                raise TypeError(f"inputs must hold paths (str or PathLike), got {item!r}")
            names.append(os.fspath(item))
        if not isinstance(outdir, (str, os.PathLike)):
            raise TypeError(f"outdir must be a path, got {type(outdir).__name__}")
        folder = Path(outdir)
        folder.mkdir(parents=True, exist_ok=True)
        folder = folder.resolve()
        merged = self._merged(control)
        sources = [Path(n).absolute() for n in names]
        known: dict[int, FileResult] = {}
        finals: list[Path | None] = []
        for index, (name, source) in enumerate(zip(names, sources, strict=True)):
            try:
                given = self.outname(name, **merged) if self.outname else source.name
            except Exception as exc:
                known[index] = FileResult(
                    name, None, "failed", {}, error_record("outname", index, exc)
                )
                finals.append(None)
                continue
            try:
                finals.append(resolve_output(folder, given))
            except UnsafePathError as exc:
                known[index] = FileResult(
                    name, None, "failed", {}, error_record("outname", index, exc)
                )
                finals.append(None)
        clashes = find_clashes(sources, finals)
        if clashes:
            shown = "; ".join(clashes[:5]) + (
                f"; and {len(clashes) - 5} more" if len(clashes) > 5 else ""
            )
            raise ValueError(f"refusing to start the file job: {shown}")
        remove_strays({folder} | {f.parent for f in finals if f is not None})
        job = self.fingerprint()
        control_id = control_fingerprint(merged)
        records = Manifest(folder).load() if resume else {}
        relative: dict[int, str] = {}
        tasks = []
        for index, final in enumerate(finals):
            if final is None:
                continue
            rel = final.relative_to(folder).as_posix()
            relative[index] = rel
            source = sources[index].resolve() if sources[index].exists() else sources[index]
            record = records.get(rel)
            if resume and still_valid(
                record, source=source, final=final, job=job, control=control_id
            ):
                assert record is not None
                known[index] = FileResult(
                    names[index], str(final), "skipped", dict(record.meta or {}), None
                )
                continue
            tasks.append(FileTask(index, names[index], str(final)))
        return _Plan(tasks, known, names, sources, folder, relative, job, control_id)

    def _stream_of(self, plan: _Plan, *, workers: int | None, control: dict[str, Any]) -> Stream:
        _check_workers(workers)
        largest = 0
        for task in plan.tasks:
            with contextlib.suppress(OSError):
                largest = max(largest, os.stat(task.input).st_size)
        caps = [w for w in (self.workers, workers) if w is not None]
        if self.backend == "inline":
            caps.append(1)  # an inline stage runs in the thread that feeds it
        count = worker_count(
            len(plan.tasks),
            workers=min(caps) if caps else None,
            worker_memory=self.worker_memory,
            largest_input=largest,
        )
        worker = FileWorker(
            self.process,
            self.read,
            self.write,
            self.pre,
            self.post,
            self.meta,
            self._merged(control),
            fsync=self.fsync,
        )
        collector = _Collector(plan)
        return (
            from_iterable(plan.tasks, name="inputs")
            .map(
                worker,
                workers=count,
                backend=self.backend,
                ordered=True,
                on_error="skip",
                name=STAGE_NAME,
            )
            .transform(collector, backend="inline", name="results")
        )


def _check_workers(workers: Any) -> None:
    if workers is not None and (
        isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
    ):
        raise ValueError(f"workers must be a positive integer or None, got {workers!r}")


class _Collector:
    """Runs in the parent: results in input order, the manifest appended as outputs land."""

    def __init__(self, plan: _Plan) -> None:
        self.plan = plan

    def __call__(self, outcomes: Iterator[Outcome]) -> Iterator[FileResult]:
        plan = self.plan
        manifest = Manifest(plan.outdir)
        pending = {task.index: task for task in plan.tasks}
        try:
            upcoming = iter(outcomes)
            nxt = next(upcoming, None)
            for index, name in enumerate(plan.inputs):
                if index in plan.known:
                    yield plan.known[index]
                    continue
                task = pending[index]
                if nxt is not None and nxt.index == index:
                    yield self._finish(manifest, task, nxt)
                    nxt = next(upcoming, None)
                else:
                    yield FileResult(name, None, "failed", {}, _lost(index))
        finally:
            manifest.close()

    def _finish(self, manifest: Manifest, task: FileTask, outcome: Outcome) -> FileResult:
        plan = self.plan
        if outcome.status != "written":
            return FileResult(task.input, None, outcome.status, outcome.meta, outcome.error)
        source = plan.sources[task.index]
        try:
            source = source.resolve()
            size, mtime = file_state(source)
        except OSError:
            size, mtime = -1, -1  # a record that never matches: resume redoes the file
        manifest.append(
            Record(
                output=plan.relative[task.index],
                input=str(source),
                input_size=size,
                input_mtime_ns=mtime,
                output_size=outcome.output_size,
                output_mtime_ns=outcome.output_mtime_ns,
                job=plan.job,
                control=plan.control,
                meta=jsonable_meta(outcome.meta),
            )
        )
        return FileResult(task.input, task.output, "written", outcome.meta, None)


def _lost(index: int) -> ErrorRecord:
    return ErrorRecord(
        STAGE_NAME,
        index,
        "WorkerCrashedError",
        "the worker processing this file died (killed, out of memory or crashed); its "
        "output was not written; run again with resume=True to redo it",
        "",
    )
