"""The ``headrace`` command line: one module per subcommand, listed in `COMMANDS`.

Owns: the top-level parser, ``--version``, dispatch, and the exit codes every subcommand shares
(`_args`). A subcommand is a module of this package with ``HELP`` (one line), ``DESCRIPTION``,
``EXAMPLE`` (a command line), ``add_arguments(parser)`` and ``main(args) -> int``; adding one is
that module plus its name in `COMMANDS`. Subcommands build on the public API like a user's
program; `doctor` also reads the core's names for segments and temp folders (`_shm`,
`_tempdirs`). Never imported by ``import headrace``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import textwrap
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from ._args import INTERRUPTED, USAGE, say, version

#: The subcommands, in the order ``headrace --help`` lists them: module names in this package.
COMMANDS = ("demo", "run", "files", "doctor", "bench")


def _modules() -> list[ModuleType]:
    return [importlib.import_module(f"{__name__}.{name}") for name in COMMANDS]


def build_parser() -> argparse.ArgumentParser:
    modules = _modules()
    examples = "\n".join(f"  {m.EXAMPLE}" for m in modules)
    parser = argparse.ArgumentParser(
        prog="headrace",
        description="Parallel streaming data pipelines for numerical and machine-learning data.",
        epilog=f"examples:\n{examples}\n\n'headrace COMMAND --help' describes a command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"headrace {version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in zip(COMMANDS, modules, strict=True):
        sub = commands.add_parser(
            name,
            help=module.HELP,
            description=textwrap.fill(module.DESCRIPTION, 79),
            epilog=f"example:\n  {module.EXAMPLE}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sub)
        sub.set_defaults(command_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``headrace`` command; returns the exit code."""
    parser = build_parser()
    args: Any = parser.parse_args(argv)
    module = getattr(args, "command_module", None)
    if module is None:
        parser.print_help(sys.stderr)
        return USAGE
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(module.main(args))
    except KeyboardInterrupt:
        say(args.command, "interrupted")
        return INTERRUPTED
