"""One file, start to finish, inside a worker: read, steps, metadata, atomic write.

Owns: `FileStep` (what a step returns to hand keywords or metadata on), `FileTask` (what the
parent sends: paths only), `Outcome` (what comes back: status, metadata, error record, the
output's size and mtime), and `FileWorker` (the callable a stage runs). An exception in user
code becomes the file's error record here, so one bad file never stops the others; a worker
that dies is seen by the stage. Imports `_types` only.
"""

from __future__ import annotations

import inspect
import os
import traceback
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from .._memory import give_back_memory, keep_freed_memory
from .._records import ErrorRecord
from ._atomic import commit, discard, temporary_path

#: Characters of an exception message kept in an error record (RELIABILITY: records cap what
#: they print of an item).
MESSAGE_CHARS = 2000


class FileStep(NamedTuple):
    """What a step of a `FileJob` may return instead of the bare data.

    ``read`` and every step may return one. ``control`` adds keywords (or overrides them) for
    the later steps of the same file only;
    ``meta`` is merged into the file's metadata. ``data`` of ``None`` rejects the file, keeping
    the metadata gathered so far.

    Examples
    --------
    >>> import headrace as hr
    >>> def flag_bright(data, limit=10, **control):
    ...     bright = max(data) > limit
    ...     return hr.FileStep(data, control={"bright": bright}, meta={"bright": bright})
    >>> flag_bright([3, 40]).meta
    {'bright': True}
    """

    data: Any
    control: Mapping[str, Any] | None = None
    meta: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class FileTask:
    index: int
    input: str
    output: str  # the final path, already checked to be inside outdir


@dataclass(frozen=True)
class Outcome:
    index: int
    status: str  # "written" | "rejected" | "failed"
    meta: dict[str, Any]
    error: ErrorRecord | None
    output_size: int = 0
    output_mtime_ns: int = 0


#: A step as the worker runs it: where (for error records), the function, the keywords it takes.
Step = tuple[str, Callable[..., Any], "frozenset[str] | None"]


class _Rejected(Exception):
    """Internal: a step returned None."""


class _StepFailed(Exception):
    def __init__(self, where: str, exc: Exception) -> None:
        super().__init__(where)
        self.where = where
        self.exc = exc


def step_name(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or fn)


def accepted_keywords(fn: Any, positional: int = 1) -> frozenset[str] | None:
    """The keywords ``fn`` takes by name, or None if it takes any (``**control``) or its
    signature cannot be read; functions such as ``np.load`` then get only what they accept."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    names = set()
    for p in list(parameters)[positional:]:
        if p.kind is p.VAR_KEYWORD:
            return None
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            names.add(p.name)
    return frozenset(names)


def error_record(where: str, index: int | None, exc: BaseException) -> ErrorRecord:
    message = str(exc)
    if len(message) > MESSAGE_CHARS:
        message = message[:MESSAGE_CHARS] + f"... ({len(message)} characters)"
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return ErrorRecord(where, index, type(exc).__name__, message, text)


def read_bytes(path: str, **control: Any) -> bytes:
    """The default ``read``: the file's bytes."""
    return Path(path).read_bytes()


def write_bytes(data: Any, path: str, **control: Any) -> None:
    """The default ``write``: bytes (or str, as UTF-8) to the file."""
    if isinstance(data, str):
        data = data.encode()
    with open(path, "wb") as out:
        out.write(data)


class FileWorker:
    """Runs one file through the job's functions; the stage callable of a file job."""

    def __init__(
        self,
        process: Callable[..., Any] | None,
        read: Callable[..., Any],
        write: Callable[..., Any],
        pre: Sequence[Callable[..., Any]],
        post: Sequence[Callable[..., Any]],
        meta: Sequence[Callable[..., Any]],
        control: Mapping[str, Any],
        fsync: bool = False,
    ) -> None:
        self.fsync = fsync
        # Which control keywords each function takes (None: all of them), computed here
        # and sent along with the functions.
        self.read = (read, accepted_keywords(read))
        self.write = (write, accepted_keywords(write, 2))
        steps: list[Step] = [
            (f"pre[{i}] {step_name(fn)}", fn, accepted_keywords(fn)) for i, fn in enumerate(pre)
        ]
        if process is not None:
            steps.append((f"process {step_name(process)}", process, accepted_keywords(process)))
        steps += [
            (f"post[{i}] {step_name(fn)}", fn, accepted_keywords(fn)) for i, fn in enumerate(post)
        ]
        self.steps = steps
        self.meta: list[Step] = [
            (f"meta {step_name(fn)}", fn, accepted_keywords(fn)) for fn in meta
        ]
        self.control = dict(control)
        # The program that made the job: its allocator is never tuned (see `_memory`).
        self.owner = os.getpid()
        self.keeping = False

    def _keep_memory(self) -> None:
        """In a worker process, before the first file: reuse freed memory from file to file,
        until this worker is dropped at the end of its job."""
        if os.getpid() != self.owner and keep_freed_memory():
            weakref.finalize(self, give_back_memory)
        self.keeping = True

    def __call__(self, task: FileTask) -> Outcome:
        if not self.keeping:
            self._keep_memory()
        control = dict(self.control)
        meta: dict[str, Any] = {}
        try:
            data = self._step(("read", *self.read), task.input, control, meta)
            for step in self.steps:
                data = self._step(step, data, control, meta)
            for step in self.meta:
                extra = self._call(step, data, control)
                if extra is not None:
                    if not isinstance(extra, Mapping):
                        raise _StepFailed(
                            step[0],
                            TypeError(
                                f"a meta function must return a dict, got {type(extra).__name__}"
                            ),
                        )
                    meta.update(extra)
            size, mtime = self._write(data, Path(task.output), control)
        except _Rejected:
            return Outcome(task.index, "rejected", meta, None)
        except _StepFailed as failed:
            return Outcome(
                task.index, "failed", meta, error_record(failed.where, task.index, failed.exc)
            )
        return Outcome(task.index, "written", meta, None, size, mtime)

    @staticmethod
    def _call(step: Step, first: Any, control: dict[str, Any], *more: Any) -> Any:
        where, fn, accepts = step
        if accepts is not None:
            control = {k: v for k, v in control.items() if k in accepts}
        try:
            return fn(first, *more, **control)
        except Exception as exc:
            raise _StepFailed(where, exc) from exc

    def _step(self, step: Step, data: Any, control: dict[str, Any], meta: dict[str, Any]) -> Any:
        result = self._call(step, data, control)
        if isinstance(result, FileStep):
            if result.control:
                control.update(result.control)
            if result.meta:
                meta.update(result.meta)
            result = result.data
        if result is None:
            raise _Rejected
        return result

    def _write(self, data: Any, final: Path, control: dict[str, Any]) -> tuple[int, int]:
        temporary = temporary_path(final)
        try:
            try:
                final.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _StepFailed("write", exc) from exc
            self._call(("write", *self.write), data, control, str(temporary))
            if not temporary.is_file():
                raise _StepFailed(
                    "write",
                    FileNotFoundError(
                        f"write did not create the file it was given ({temporary.name}); it "
                        "must write to exactly the path it receives"
                    ),
                )
            try:
                commit(temporary, final, fsync=self.fsync)
                st = final.stat()
            except OSError as exc:
                raise _StepFailed("write", exc) from exc
        finally:
            discard(temporary)
        return st.st_size, st.st_mtime_ns
