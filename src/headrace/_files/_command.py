"""``headrace files MODULE:ATTR INPUT... --outdir DIR``: a file job from user code.

Owns: the subcommand's arguments (`add_arguments`) and its body (`main`): load the `FileJob`,
expand the inputs (globs, ``@list.txt``), read ``--set KEY=VALUE`` control keywords, run with
live progress, print a summary, write ``--json``. Exit code 0 when no file failed, 1 when one
did, 2 for a usage error. Imports the files domain only.
"""

from __future__ import annotations

import argparse
import ast
import glob
import importlib
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from ._job import STATUSES, FileJob, FileResult

#: Failed files listed one per line in the summary; the rest are counted.
SHOWN_FAILURES = 20


class UsageError(Exception):
    """A bad argument: printed as one line, exit code 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "job",
        metavar="MODULE:ATTR",
        help="the FileJob (or a function returning one): a module name or a .py file, ':', a name",
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="input files; globs ('data/*.npy', quoted) and @list.txt (one path a line) expand",
    )
    parser.add_argument("--outdir", required=True, type=Path, help="where the outputs go")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="skip files whose output the manifest in outdir records as up to date",
    )
    parser.add_argument("--workers", type=int, default=None, help="at most this many workers")
    parser.add_argument(
        "--set",
        dest="control",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a control keyword (VALUE read as a Python literal, else a string); repeatable",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the results here")
    parser.add_argument(
        "--no-progress", action="store_true", help="do not show live progress on stderr"
    )


def load_job(spec: str) -> FileJob:
    module_name, sep, attribute = spec.rpartition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"expected MODULE:ATTR (such as mypipeline:job), got {spec!r}")
    try:
        if module_name.endswith(".py") or os.sep in module_name:
            path = Path(module_name)
            if not path.is_file():
                raise UsageError(f"no such file: {path}")
            # Imported by its own name from its folder, so that process workers (which get
            # this sys.path) can import it to unpickle its functions.
            sys.path.insert(0, str(path.resolve().parent))
            module = importlib.import_module(path.stem)
        else:
            if "" not in sys.path:
                sys.path.insert(0, "")
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name}: {exc}") from exc
    try:
        value = getattr(module, attribute)
    except AttributeError:
        raise UsageError(f"{module_name} has no attribute {attribute!r}") from None
    if not isinstance(value, FileJob) and callable(value):
        value = value()
    if not isinstance(value, FileJob):
        raise UsageError(f"{spec} is a {type(value).__name__}, not a headrace.FileJob")
    return value


def expand_inputs(items: list[str]) -> list[str]:
    found: list[str] = []
    for item in items:
        if item.startswith("@"):
            try:
                lines = Path(item[1:]).read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise UsageError(f"cannot read the input list {item[1:]}: {exc}") from exc
            found.extend(s for s in (line.strip() for line in lines) if s and not s.startswith("#"))
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item))
            if not matches:
                raise UsageError(f"no file matches {item!r}")
            found.extend(matches)
        else:
            found.append(item)
    return found


def parse_control(pairs: list[str]) -> dict[str, Any]:
    control: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"--set takes KEY=VALUE with KEY a Python name, got {pair!r}")
        try:
            control[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            control[key] = text
    return control


def summary(results: list[FileResult]) -> str:
    counts = Counter(r.status for r in results)
    lines = [f"{'status':<10} {'files':>7}"]
    lines += [f"{status:<10} {counts.get(status, 0):>7}" for status in STATUSES]
    lines.append(f"{'total':<10} {len(results):>7}")
    failed = [r for r in results if r.status == "failed"]
    for r in failed[:SHOWN_FAILURES]:
        assert r.error is not None
        lines.append(f"FAILED {r.input}: [{r.error.stage}] {r.error.type}: {r.error.message}")
    if len(failed) > SHOWN_FAILURES:
        lines.append(f"... and {len(failed) - SHOWN_FAILURES} more failed (see --json)")
    return "\n".join(lines)


def _as_json(results: list[FileResult]) -> dict[str, Any]:
    return {
        "counts": {s: sum(r.status == s for r in results) for s in STATUSES},
        "results": [
            {
                "input": r.input,
                "output": r.output,
                "status": r.status,
                "meta": r.meta,
                "error": None if r.error is None else r.error.to_dict(),
            }
            for r in results
        ],
    }


def main(args: argparse.Namespace) -> int:
    try:
        job = load_job(args.job)
        inputs = expand_inputs(args.inputs)
        control = parse_control(args.control)
        if args.workers is not None and args.workers < 1:
            raise UsageError(f"--workers must be at least 1, got {args.workers}")
        results = job.run(
            inputs,
            args.outdir,
            resume=args.resume,
            progress=not args.no_progress,
            workers=args.workers,
            **control,
        )
    except (UsageError, ValueError, TypeError) as exc:
        print(f"headrace files: error: {exc}", file=sys.stderr)
        return 2
    print(summary(results))
    if args.json is not None:
        args.json.write_text(json.dumps(_as_json(results), indent=1, default=repr) + "\n")
    return 1 if any(r.status == "failed" for r in results) else 0
