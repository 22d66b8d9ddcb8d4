"""The manifest of an output directory: which output was written from what, and how.

Owns: `Manifest` (an append-only JSON-lines file in ``outdir``, one record per output written,
rewritten compactly at the end of a run), `Record`, and the fingerprints of a job's code and
of its control keywords. Resume trusts a record only if the input (path, size, mtime), the
control keywords, the job's code and the output (size, mtime) all still match: anything else
is redone, so an output is never stale. Imports nothing from headrace.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("headrace")

MANIFEST_NAME = ".headrace-manifest.jsonl"
VERSION = 1


@dataclass(frozen=True)
class Record:
    """One output written: from which input, with which job and control keywords."""

    output: str  # relative to outdir, with forward slashes
    input: str
    input_size: int
    input_mtime_ns: int
    output_size: int
    output_mtime_ns: int
    job: str
    control: str
    meta: dict[str, Any] | None


def file_state(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _code_digest(code: types.CodeType, into: Any) -> None:
    # Names and bytecode, not line numbers: moving a function in its file changes nothing.
    into.update(code.co_code)
    into.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code_digest(const, into)
        else:
            into.update(repr(const).encode())


def _callable_digest(fn: Any, into: Any) -> None:
    target = getattr(fn, "func", None)
    if target is not None and hasattr(fn, "args"):  # functools.partial
        into.update(repr((fn.args, sorted(fn.keywords.items()))).encode())
        _callable_digest(target, into)
        return
    owner = getattr(fn, "__self__", None)
    if owner is not None and not isinstance(owner, types.ModuleType):
        into.update(type(owner).__qualname__.encode())
    function = getattr(fn, "__func__", fn)
    into.update(str(getattr(function, "__module__", "")).encode())
    into.update(str(getattr(function, "__qualname__", type(fn).__qualname__)).encode())
    code = getattr(function, "__code__", None)
    if code is None:  # a callable instance or class: its __call__ or __init__
        call = type(fn).__dict__.get("__call__")
        code = getattr(call, "__code__", None)
    if isinstance(code, types.CodeType):
        _code_digest(code, into)


def job_fingerprint(parts: Mapping[str, Any]) -> str:
    """A digest of the job's callables (by role) and options that change what is written."""
    digest = hashlib.sha256()
    for role in sorted(parts):
        digest.update(role.encode())
        value = parts[role]
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            if callable(item):
                _callable_digest(item, digest)
            else:
                digest.update(repr(item).encode())
    return digest.hexdigest()[:32]


def _canonical(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {
            "ndarray": hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest(),
            "dtype": str(value.dtype),
            "shape": list(value.shape),
        }
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if callable(value):
        digest = hashlib.sha256()
        _callable_digest(value, digest)
        return {"callable": digest.hexdigest()}
    return {"repr": repr(value), "type": type(value).__qualname__}


def control_fingerprint(control: Mapping[str, Any]) -> str:
    text = json.dumps(_canonical(dict(control)), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def jsonable_meta(meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """``meta`` as JSON can hold it (NumPy scalars as numbers), or None if it cannot."""

    def convert(value: Any) -> Any:
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, Mapping):
            return {str(k): convert(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        return value

    try:
        converted = convert(dict(meta))
        json.dumps(converted)
    except (TypeError, ValueError):
        return None
    return converted  # type: ignore[no-any-return]


class Manifest:
    """The records of one output directory; appended as outputs are written."""

    def __init__(self, outdir: Path) -> None:
        self.path = outdir / MANIFEST_NAME
        self._file: Any = None

    def load(self) -> dict[str, Record]:
        """The latest record per output; unreadable lines (a torn last line) are ignored."""
        records: dict[str, Record] = {}
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return records
        for line in text.splitlines():
            try:
                raw = json.loads(line)
                if raw.pop("v", None) != VERSION:
                    continue
                record = Record(**raw)
            except (ValueError, TypeError):
                continue
            records[record.output] = record
        return records

    def append(self, record: Record) -> None:
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close)
        self._file.write(json.dumps({"v": VERSION, **asdict(record)}) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def compact(self, drop: Iterable[str] = ()) -> None:
        """Rewrite the manifest with one record per output still present, atomically."""
        self.close()
        records = self.load()
        for name in drop:
            records.pop(name, None)
        outdir = self.path.parent
        kept = [r for name, r in records.items() if (outdir / name).is_file()]
        temporary = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(temporary, "w", encoding="utf-8") as out:
                for record in kept:
                    out.write(json.dumps({"v": VERSION, **asdict(record)}) + "\n")
            os.replace(temporary, self.path)
        except OSError as exc:
            log.warning("could not rewrite the manifest %s: %s", self.path, exc)
            with contextlib.suppress(OSError):
                temporary.unlink()


def still_valid(
    record: Record | None,
    *,
    source: Path,
    final: Path,
    job: str,
    control: str,
    check: Callable[[Path], tuple[int, int]] = file_state,
) -> bool:
    """True if ``record`` proves ``final`` was written from ``source`` as it is now, by this job
    with these control keywords, and is unchanged since."""
    if record is None or record.job != job or record.control != control:
        return False
    if record.input != str(source):
        return False
    try:
        if check(source) != (record.input_size, record.input_mtime_ns):
            return False
        return check(final) == (record.output_size, record.output_mtime_ns)
    except OSError:
        return False
