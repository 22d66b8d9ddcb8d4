"""Output paths of a file job: where each output goes, and that it stays inside ``outdir``.

Owns: `resolve_output` (a name from ``outname`` -> a checked path), `find_clashes` (two inputs
to one output, an output over an input). Imports nothing from headrace.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path, PurePath


class UnsafePathError(ValueError):
    """An output name that would leave the output directory, or that is not a file name."""


def resolve_output(outdir: Path, name: object) -> Path:
    """The final path of the output ``name`` inside ``outdir`` (resolved, symlinks followed).

    Raises `UnsafePathError` for a name that is not a relative path below ``outdir``: empty,
    absolute, with ``..``, or leaving ``outdir`` through a symlink.
    """
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str) or not name or name.strip() in ("", "."):
        raise UnsafePathError(
            f"output name {name!r} is not a file name; outname must return a non-empty "
            "file name (str) inside outdir"
        )
    pure = PurePath(name)
    if pure.is_absolute() or os.path.isabs(name):
        raise UnsafePathError(
            f"output name {name!r} is absolute; outname must return a name relative to "
            "outdir, such as the input's base name"
        )
    if ".." in pure.parts:
        raise UnsafePathError(
            f"output name {name!r} contains '..' and could leave outdir; return a name "
            "inside outdir"
        )
    root = outdir.resolve()
    final = (root / pure).resolve()  # follows symlinks that are already there
    if final == root or root not in final.parents:
        raise UnsafePathError(
            f"output name {name!r} leads to {final}, outside outdir {root} (through a "
            "symlink); remove the symlink or choose another name"
        )
    return final


def find_clashes(inputs: Sequence[Path], outputs: Sequence[Path | None]) -> list[str]:
    """Messages for outputs shared by two inputs and for outputs that would overwrite an input."""
    problems = []
    first: dict[Path, Path] = {}
    input_set = {p.resolve() for p in inputs}
    for source, out in zip(inputs, outputs, strict=True):
        if out is None:
            continue
        if out in first:
            problems.append(f"{first[out]} and {source} both map to output {out}")
        else:
            first[out] = source
        if out in input_set:
            problems.append(
                f"output {out} of {source} is an input file; writing it would overwrite an "
                "input (write to another directory or give outname a suffix)"
            )
    return problems
