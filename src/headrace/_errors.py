"""The error tree of headrace, and how a worker's exception is delivered to the consumer.

Owns: every exception class headrace raises of its own, and `deliver`, which marks a user
exception with its stage and item and attaches the worker traceback as ``__cause__``.
Imports nothing from headrace.
"""

from __future__ import annotations

import os
import traceback

#: Longest text of an item or message kept in an error record or note (security: items may be
#: huge or hold secrets; 500 characters is enough to recognise one).
MAX_REPR = 500
#: Longest text of one field of an error record (message, traceback), and of the traceback a
#: worker sends back. 8 KiB holds a deep traceback's first frames and its last ones with the
#: message; a 10 MB message is cut to this, so records of skipped items stay small.
MAX_RECORD_TEXT = 8 * 1024


class HeadraceError(Exception):
    """Root of every error headrace raises of its own."""


class GraphError(HeadraceError, ValueError):
    """The graph is invalid: a cycle, a zip over a branch that is not 1 -> 1, streams that
    cannot be combined, or options that cannot work together."""


class WorkerCrashedError(HeadraceError):
    """A worker died while it held an item (raised by backends whose workers can die)."""

    def __init__(
        self,
        message: str,
        *,
        stage: str = "",
        worker: str = "",
        exitcode: int | None = None,
        index: int | None = None,
    ) -> None:
        super().__init__(message)
        self.stage = stage
        self.worker = worker
        self.exitcode = exitcode
        self.index = index


class StageTimeoutError(HeadraceError, TimeoutError):
    """An item took longer than the stage's ``timeout``."""


class ClosedError(HeadraceError):
    """A run, or something it owns, was used after it was closed."""


class FrameError(HeadraceError, ValueError):
    """A message from a background stream is malformed or not authentic (it is refused and
    never unpickled).

    ``authentic`` is False when the message failed before or at its authentication (too few
    frames, a header too long, a bad tag): it may come from anyone who can reach the socket,
    and `ZMQStreamer` drops and counts it. An authentic message that is malformed can only
    come from the stream's own writer, and ends the pass.
    """

    def __init__(self, message: str, *, authentic: bool = True) -> None:
        super().__init__(message)
        self.authentic = authentic


class RemoteError(HeadraceError):
    """A worker's exception that could not travel whole (its class cannot be pickled or
    rebuilt): keeps the original type name, message and traceback text."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message

    def __reduce__(self) -> tuple[type[RemoteError], tuple[str, str]]:
        return (RemoteError, (self.type_name, self.message))


class SerializationError(HeadraceError):
    """An item, or a result, that could not cross between processes: pickling (or
    unpickling) it failed. Names the stage and the item (``stage``, ``index``); its
    ``__cause__`` is the pickling error. Under ``on_error="skip"`` the item is recorded and
    the run goes on."""

    def __init__(self, message: str, *, stage: str = "", index: int | None = None) -> None:
        super().__init__(message)
        self.stage = stage
        self.index = index


class RemoteTraceback(Exception):
    """Carries the text of a worker's traceback; set as ``__cause__`` of the delivered error."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "\n\nTraceback in the worker:\n" + self.text


def shorten(text: str, limit: int = MAX_REPR) -> str:
    """Cut ``text`` to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more characters]"


def cap_text(text: str, limit: int = MAX_RECORD_TEXT) -> str:
    """Cut ``text`` to about ``limit`` characters, keeping its head and its tail (where a
    traceback's first frames and its last line, the message, are) and saying what was cut."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n... [{len(text) - 2 * half} characters left out] ...\n{text[-half:]}"


#: Where headrace's own source files are: their frames leading to a user's function are left
#: out of the traceback a worker reports (set `FULL_TRACEBACKS_ENV` to keep them).
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
FULL_TRACEBACKS_ENV = "HEADRACE_FULL_TRACEBACKS"


def format_traceback(exc: BaseException) -> str:
    """The traceback text of ``exc`` as the worker saw it, capped with `cap_text`.

    Every backend makes the traceback it reports (and a process worker the one it sends
    through its pipe) with this function, so none of them carries more than `MAX_RECORD_TEXT`.
    headrace's own frames above the first frame of other code (the worker loop that called
    the user's function) are left out, unless ``$HEADRACE_FULL_TRACEBACKS`` is set.
    """
    summary = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    if not os.environ.get(FULL_TRACEBACKS_ENV):
        _drop_own_frames(summary)
    return cap_text("".join(summary.format()))


def _drop_own_frames(summary: traceback.TracebackException) -> None:
    """Leave out the leading frames in headrace's files, in ``summary`` and the exceptions
    chained to it; all of them when no other frame follows (an error of headrace's own)."""
    todo, seen = [summary], set()
    while todo:
        te = todo.pop()
        if id(te) in seen:
            continue
        seen.add(id(te))
        frames = list(te.stack)
        first = next((i for i, f in enumerate(frames) if not _own(f.filename)), None)
        if first:  # None: only headrace's frames; 0: none to leave out
            te.stack = traceback.StackSummary.from_list(frames[first:])
        todo.extend(t for t in (te.__cause__, te.__context__) if t is not None)
        todo.extend(getattr(te, "exceptions", None) or [])


def _own(filename: str) -> bool:
    return filename.startswith(_PACKAGE_DIR)


def deliver(exc: BaseException, *, stage: str, index: int | None, tb_text: str) -> BaseException:
    """Prepare a user exception for the consumer: keep its type, note where it happened,
    attach the worker traceback as ``__cause__`` (none for a crash: no worker traceback)."""
    where = f"item {index}" if index is not None else "not tied to one item (setup, a crash)"
    if not isinstance(exc, Exception):
        # SystemExit or KeyboardInterrupt raised by a stage's function must not end the
        # consumer's program silently (nor look like the user's own Ctrl-C): an error that
        # `except Exception` catches, with the original as its cause.
        wrapped = HeadraceError(
            f"stage {stage!r}: its function raised {type(exc).__name__}"
            f"({shorten(', '.join(map(repr, exc.args)), 200)}) on {where}; a stage cannot end "
            "the program: raise an Exception to fail the item, or return"
        )
        wrapped.__cause__ = exc
        exc = wrapped
    note = f"headrace: raised in stage {stage!r}, {where}"
    notes = getattr(exc, "__notes__", [])
    if note not in notes:
        exc.add_note(note)
    cause = exc.__cause__
    if not tb_text:  # a worker that crashed or never started: an empty block would say nothing
        return exc
    if isinstance(exc, HeadraceError) and cause is not None and not isinstance(cause, Exception):
        if not isinstance(cause.__cause__, RemoteTraceback):  # a wrapped SystemExit
            cause.__cause__ = RemoteTraceback(tb_text)
    elif isinstance(exc, SerializationError) and cause is not None:
        if cause.__cause__ is None:  # the pickling error keeps its place as the cause
            cause.__cause__ = RemoteTraceback(tb_text)
    elif not isinstance(cause, RemoteTraceback):
        exc.__cause__ = RemoteTraceback(tb_text)
    return exc
