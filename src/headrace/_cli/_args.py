"""What every subcommand shares: exit codes, messages, argument types, JSON output.

The style: a message starts with ``headrace <command>:`` and goes to stderr; results go to
stdout; ``--json PATH`` writes machine-readable results to a file; exit code 0 when all is well,
1 when the work failed or found a problem, 2 for a usage error, 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

OK, FAILED, USAGE, INTERRUPTED = 0, 1, 2, 130
PROGRESS_HINT = 'live progress needs rich: pip install "headrace[progress]"'


def version() -> str:
    try:
        return importlib.metadata.version("headrace")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"


def say(command: str, message: str) -> None:
    """A message of ``headrace <command>`` on stderr."""
    print(f"headrace {command}: {message}", file=sys.stderr, flush=True)


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def progress_wanted(command: str, wanted: bool) -> bool:
    """``wanted``, unless rich is missing: then say how to get it, and run without progress."""
    if wanted and importlib.util.find_spec("rich") is None:
        say(command, PROGRESS_HINT)
        return False
    return wanted


def add_json(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--json", type=Path, metavar="PATH", help=f"write {what} here as JSON")


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
