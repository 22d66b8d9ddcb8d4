"""``headrace run MODULE:ATTR``: run a pipeline defined in the user's code, from a shell or a
scheduler, and print its report.

``MODULE`` is a module name (imported with the current directory first on ``sys.path``, as
``python -m`` does) or a path to a ``.py`` file (imported under its file name, with its folder
first on ``sys.path``, so that process workers can import it too). ``ATTR`` (dotted names
allowed) is a `Stream`, a tuple or list of streams, or a function of no arguments returning one
of those. The streams run to the end as with `hr.run`: the items of a stream that is not a sink
are discarded.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Any

import headrace as hr

from ._args import FAILED, INTERRUPTED, OK, USAGE, add_json, progress_wanted, say, write_json

NAME = "run"
HELP = "run a stream defined in your code and print its report"
DESCRIPTION = (
    "Import MODULE (a module name, or a path to a .py file) and take ATTR from it: a Stream, a "
    "tuple or list of streams, or a function of no arguments that returns one of those. Run "
    "the streams to the end (the items of a stream that is not a sink are discarded), print the "
    "report, and write it as JSON and the annotated graph as DOT when asked. Exit code 0 when "
    "the run ends, 1 when it fails (the error names the stage and the item), 2 when "
    "MODULE:ATTR cannot be used, 130 after Ctrl-C."
)
EXAMPLE = "headrace run mypipeline:build --progress --seed 0 --json report.json --dot run.dot"

#: The note headrace adds to a user's exception (`_errors.deliver`): where it was raised.
_WHERE = re.compile(r"^headrace: raised in stage (?P<stage>.+), (?P<item>item \d+|not tied.*)$")


class UsageError(Exception):
    """MODULE:ATTR does not name something that can run."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target",
        metavar="MODULE:ATTR",
        help="e.g. mypipeline:stream, mypipeline:build, or path/to/pipeline.py:build",
    )
    parser.add_argument(
        "--progress", action="store_true", help="show live per-stage progress on stderr"
    )
    add_json(parser, "the report (Report.to_dict())")
    parser.add_argument(
        "--dot", type=Path, metavar="PATH", help="write the graph, annotated with the figures"
    )
    parser.add_argument(
        "--seed", type=int, default=None, metavar="N", help="base seed of hr.rng() in the stages"
    )


def load(target: str) -> Any:
    """The object ``MODULE:ATTR`` names; `UsageError` if there is none."""
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"expected MODULE:ATTR (e.g. mypipeline:build), got {target!r}")
    if module_name.endswith(".py") or os.sep in module_name:
        path = Path(module_name).resolve()
        if not path.is_file():
            raise UsageError(f"no file {path}")
        folder, module_name = str(path.parent), path.stem
    else:
        path, folder = None, os.getcwd()
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise UsageError(
                f"cannot import {module_name!r} from {folder}: no such module "
                "(give a module name importable from here, or a path to a .py file)"
            ) from None
        raise  # the user's module imports something missing: their error, with its traceback
    if path is not None and Path(getattr(module, "__file__", "") or "").resolve() != path:
        raise UsageError(
            f"a module named {module_name!r} is already imported from {module.__file__}, not "
            f"{path}: rename your file"
        )
    found: Any = module
    for part in attr.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise UsageError(f"{module_name!r} has no attribute {attr!r}") from None
    return found


def streams_of(found: Any, target: str) -> list[hr.Stream]:
    """The streams ``found`` is or returns (a function is called here)."""
    if callable(found) and not isinstance(found, hr.Stream):
        try:
            inspect.signature(found).bind()
        except TypeError:
            raise UsageError(
                f"{target} takes arguments: give a function of no arguments that returns the "
                "streams"
            ) from None
        except ValueError:
            pass  # no signature to check (a builtin): call it
        found = found()
    if isinstance(found, hr.Stream):
        return [found]
    if isinstance(found, (tuple, list)) and found and all(isinstance(s, hr.Stream) for s in found):
        return list(found)
    hint = ""
    if isinstance(found, hr.Streamer) or hasattr(found, "__iter__"):
        hint = " (for an iterable or a Streamer, return hr.from_iterable(it) instead)"
    raise UsageError(
        f"{target} gave {type(found).__name__}, not a Stream, a tuple of streams, or a "
        f"function returning one{hint}"
    )


def _discard(item: Any) -> None:
    """The sink behind a terminal stream that is not a sink."""


def _terminal(stream: hr.Stream) -> hr.Stream:
    # What hr.run does: a sink stays; a plain stream gets a fused sink that drops its items, so
    # that no outlet waits for another. (`_node.kind`: a stream has no public "is a sink".)
    if stream._node.kind == "sink":
        return stream
    return stream.sink(_discard, backend="inline", name="discard")


def summary(error: BaseException) -> str:
    """One line: the stage and item an error names, its type and message."""
    where = ""
    stage = getattr(error, "stage", "")
    if isinstance(error, hr.WorkerCrashedError) and stage:
        index = getattr(error, "index", None)
        where = f"in stage {stage!r}" + (f", item {index}" if index is not None else "")
    for note in getattr(error, "__notes__", []):
        match = _WHERE.match(note)
        if match:
            where = f"in stage {match['stage']}, {match['item']}"
    first = (str(error).strip().splitlines() or [""])[0]
    text = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return f"FAILED {where}: {text}" if where else f"FAILED: {text}"


def _failed(error: BaseException) -> int:
    worker = getattr(error.__cause__, "text", None)  # a worker's traceback (`_errors`)
    if isinstance(worker, str):
        print(f"Traceback in the worker:\n{worker.rstrip()}", file=sys.stderr)
    else:
        traceback.print_exception(error, file=sys.stderr)
    say(NAME, summary(error))
    return FAILED


def main(args: argparse.Namespace) -> int:
    try:
        streams = streams_of(load(args.target), args.target)
    except UsageError as exc:
        say(NAME, str(exc))
        return USAGE
    except Exception as exc:  # the user's module or function raised
        return _failed(exc)
    progress = progress_wanted(NAME, args.progress)
    try:
        run = hr.Run(
            [(s._node, s._port) for s in map(_terminal, streams)],  # what hr.run hands to Run
            progress=progress,
            seed=args.seed,
        )
    except Exception as exc:  # an invalid graph or option, a function that cannot be sent
        return _failed(exc)
    error: BaseException | None = None
    interrupted = False
    try:
        with run:
            run.drain()
    except KeyboardInterrupt:
        interrupted = True
    except Exception as exc:
        error = exc
    report = run.report()
    print(report.table(), flush=True)
    if args.json is not None:
        write_json(args.json, report.to_dict())
    if args.dot is not None:
        args.dot.parent.mkdir(parents=True, exist_ok=True)
        args.dot.write_text(report.to_dot(), encoding="utf-8")
    if interrupted:
        say(NAME, "interrupted")
        return INTERRUPTED
    if error is not None:
        return _failed(error)
    return OK
