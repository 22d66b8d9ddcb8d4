"""``headrace doctor``: what this machine gives a pipeline, and what is wrong with it.

Reports the interpreter (and known bugs of it that hit pipelines), the cores a process may
really use (CPU affinity and cgroup quota, which is what a container has), memory (and the
cgroup limit), ``/dev/shm``, the start methods, the optional extras, and what dead programs left:
shared-memory segments ``hr-<owner pid>-...`` (`_shm`) and temp folders
``headrace-<owner pid>-...`` (`_tempdirs`) whose owner process is dead. ``--clean`` removes
those, never anything of a live process. Exit code 0 when nothing is wrong, 1 with one line per
problem otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import math
import multiprocessing
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import _shm, _tempdirs
from ._args import FAILED, OK, add_json, say, version, write_json

NAME = "doctor"
HELP = "check this machine for headrace: cores, memory, /dev/shm, extras, leftovers"
DESCRIPTION = (
    "Report the interpreter (and known bugs of it that hit pipelines), the usable cores (CPU "
    "affinity and cgroup quota), memory, /dev/shm, the start methods, the optional extras, and "
    "the shared-memory segments and temp folders that killed headrace programs left. Exit code "
    "0 when nothing is wrong, 1 with one line per problem otherwise."
)
EXAMPLE = "headrace doctor --clean --json doctor.json"

#: The optional extras: distribution name -> what it gives.
EXTRAS = {
    "rich": "live progress",
    "pyzmq": "ZMQStreamer",
    "graphviz": "rendering diagrams (also needs the dot program)",
    "torch": "Stream.to_torch",
    "ray": "the Ray engine",
}
#: Below this much free space in /dev/shm, the default shared-memory budget of a run (a
#: quarter of the free space) is under 64 MiB and most arrays fall back to pipes. Docker's
#: default /dev/shm is 64 MiB.
SHM_MIN_FREE = 256 * 2**20
CGROUP = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class KnownBug:
    implementation: str  # sys.implementation.name
    first: tuple[int, int, int]  # first affected release
    last: tuple[int, int, int]  # last affected release of that line
    fixed: str  # the releases that fix it
    what: str


#: Interpreter bugs that hit pipelines. gh-106905: threads building ASTs at the same time (e.g.
#: np.load parses every .npy header with ast.literal_eval) share one recursion counter, so a
#: thread stage intermittently raises "SystemError: AST constructor recursion depth mismatch".
#: The counter came with 3.11.0 (gh-95185); it became per call in 3.11.8 and 3.12.2 (GH-113035,
#: backported on 2023-12-25, after 3.11.7 and 3.12.1 were released).
KNOWN_BUGS = (
    KnownBug(
        "cpython",
        (3, 11, 0),
        (3, 11, 7),
        "3.11.8",
        "gh-106905: thread stages that parse Python (np.load reads .npy headers that way) "
        "intermittently raise 'SystemError: AST constructor recursion depth mismatch'",
    ),
    KnownBug(
        "cpython",
        (3, 12, 0),
        (3, 12, 1),
        "3.12.2",
        "gh-106905: thread stages that parse Python (np.load reads .npy headers that way) "
        "intermittently raise 'SystemError: AST constructor recursion depth mismatch'",
    ),
)


_DISPLAY = {"cpython": "CPython", "pypy": "PyPy"}


def known_bugs(implementation: str, release: Sequence[int]) -> list[str]:
    """Problems of the interpreter ``implementation`` at ``release`` (major, minor, micro)."""
    at = tuple(release[:3])
    return [
        f"{_DISPLAY.get(implementation, implementation)} {'.'.join(map(str, at))} has "
        f"{bug.what}; use {bug.fixed} or later"
        for bug in KNOWN_BUGS
        if bug.implementation == implementation and bug.first <= at <= bug.last
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--clean",
        action="store_true",
        help="remove the segments and temp folders of dead headrace programs",
    )
    add_json(parser, "the findings")


# --- what the machine has --------------------------------------------------------------------


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return None


def _cgroup_dirs() -> list[Path]:
    """This process's cgroup folders (v2 first, then v1 controllers), those that exist."""
    found = []
    for line in (_read(Path("/proc/self/cgroup")) or "").splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            found.append(CGROUP / path.lstrip("/"))
        for name in controllers.split(","):
            if name in ("cpu", "memory"):
                found.append(CGROUP / name / path.lstrip("/"))
    found += [CGROUP, CGROUP / "cpu", CGROUP / "memory"]  # a container sees its own at the root
    return [p for p in found if p.is_dir()]


def cpu_quota() -> float | None:
    """The cgroup's CPU quota in cores (None: no quota)."""
    for folder in _cgroup_dirs():
        v2 = _read(folder / "cpu.max")
        if v2 is not None:
            quota, _, period = v2.partition(" ")
            if quota != "max" and period:
                return int(quota) / int(period)
            continue
        quota1, period1 = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
        if quota1 and period1 and int(quota1) > 0:
            return int(quota1) / int(period1)
    return None


def memory_limit() -> int | None:
    """The cgroup's memory limit in bytes (None: no limit)."""
    for folder in _cgroup_dirs():
        text = _read(folder / "memory.max") or _read(folder / "memory.limit_in_bytes")
        if text and text != "max" and int(text) < 2**60:  # v1 writes "no limit" as ~2**63
            return int(text)
    return None


def meminfo() -> dict[str, int]:
    """MemTotal and MemAvailable in bytes, from /proc/meminfo."""
    found = {}
    for line in (_read(Path("/proc/meminfo")) or "").splitlines():
        key, _, value = line.partition(":")
        if key in ("MemTotal", "MemAvailable"):
            found[key] = int(value.split()[0]) * 1024
    return found


def _cpu() -> dict[str, Any]:
    count = os.cpu_count() or 1
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else count
    quota = cpu_quota()
    usable = min(affinity, math.ceil(quota)) if quota else affinity
    return {"count": count, "affinity": affinity, "cgroup_quota": quota, "usable": usable}


def _memory() -> dict[str, Any]:
    info = meminfo()
    return {
        "total": info.get("MemTotal"),
        "available": info.get("MemAvailable"),
        "cgroup_limit": memory_limit(),
    }


def _shm_info() -> dict[str, Any]:
    folder = _shm.SHM_DIR
    found: dict[str, Any] = {"path": folder, "exists": os.path.isdir(folder)}
    if not found["exists"]:
        return found
    st = os.statvfs(folder)
    segments, used = 0, 0
    for entry in os.scandir(folder):
        if entry.name.startswith("hr-"):
            segments += 1
            with contextlib.suppress(OSError):  # removed meanwhile
                used += entry.stat().st_blocks * 512
    found.update(
        size=st.f_blocks * st.f_frsize,
        free=st.f_bavail * st.f_frsize,
        used=(st.f_blocks - st.f_bfree) * st.f_frsize,
        writable=os.access(folder, os.W_OK),
        headrace_segments=segments,
        headrace_bytes=used,
    )
    return found


def _start_methods() -> dict[str, Any]:
    from .._backends._process._start import ENV_START_METHOD, default_start_method

    try:
        default: str | None = default_start_method()
    except ValueError:
        default = None  # a bad $HEADRACE_START_METHOD: reported as a problem
    return {
        "available": multiprocessing.get_all_start_methods(),
        "default": default,
        "env": os.environ.get(ENV_START_METHOD),
    }


def _extras() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in EXTRAS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def _leftovers(clean: bool) -> dict[str, Any]:
    segments = _shm.stale_segments()
    sizes = 0
    for name in segments:
        with contextlib.suppress(OSError):
            sizes += os.stat(_shm.shm_path(name)).st_blocks * 512
    folders = _tempdirs.stale()
    found: dict[str, Any] = {
        "segments": segments,
        "segment_bytes": sizes,
        "temp_folders": folders,
        "removed_segments": 0,
        "removed_temp_folders": 0,
    }
    if clean:
        found["removed_segments"] = _shm.sweep_stale()
        found["removed_temp_folders"] = _tempdirs.sweep_stale()
    return found


def examine(clean: bool) -> dict[str, Any]:
    """Everything doctor reports, as a dict (the ``--json`` layout), with its ``problems``."""
    impl = sys.implementation.name
    findings: dict[str, Any] = {
        "headrace": version(),
        "numpy": np.__version__,
        "python": {
            "implementation": impl,
            "version": ".".join(map(str, sys.version_info[:3])),
            "executable": sys.executable,
        },
        "cpu": _cpu(),
        "memory": _memory(),
        "shm": _shm_info(),
        "start_methods": _start_methods(),
        "extras": _extras(),
        "dot": shutil.which("dot"),
        "leftovers": _leftovers(clean),
    }
    findings["problems"] = problems(findings, known_bugs(impl, sys.version_info[:3]))
    return findings


def problems(findings: dict[str, Any], bugs: list[str]) -> list[str]:
    """One line per thing that is wrong, with what to do about it."""
    found = list(bugs)
    shm = findings["shm"]
    if not shm["exists"] or not shm["writable"]:
        found.append(
            f"{shm['path']} is missing or not writable: arrays cannot cross processes through "
            "shared memory and travel through pipes (slower)"
        )
    elif shm["free"] < SHM_MIN_FREE:
        found.append(
            f"{shm['path']} has {_size(shm['free'])} free: most arrays will travel through "
            "pipes (slower). In Docker, give it more with --shm-size=2g"
        )
    env = findings["start_methods"]["env"]
    if env is not None and findings["start_methods"]["default"] is None:
        found.append(f"$HEADRACE_START_METHOD={env!r} is not a start method headrace knows")
    left = findings["leftovers"]
    segments = len(left["segments"]) - left["removed_segments"]
    if segments > 0:
        found.append(
            f"{segments} shared-memory segment(s) ({_size(left['segment_bytes'])}) of dead "
            f"headrace programs in {shm['path']}: remove them with headrace doctor --clean"
        )
    folders = len(left["temp_folders"]) - left["removed_temp_folders"]
    if folders > 0:
        found.append(
            f"{folders} temp folder(s) of dead headrace programs: remove them with "
            "headrace doctor --clean"
        )
    return found


# --- text -------------------------------------------------------------------------------------


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"  # pragma: no cover - the loop returns


def text(f: dict[str, Any]) -> list[str]:
    """The findings as lines for a terminal."""
    py, cpu, mem, shm = f["python"], f["cpu"], f["memory"], f["shm"]
    quota = "none" if cpu["cgroup_quota"] is None else f"{cpu['cgroup_quota']:g}"
    limit = "none" if mem["cgroup_limit"] is None else _size(mem["cgroup_limit"])
    starts = f["start_methods"]
    methods = ", ".join(
        f"{m} (default)" if m == starts["default"] else m for m in starts["available"]
    )
    if starts["env"]:
        methods += f"; $HEADRACE_START_METHOD={starts['env']}"
    if shm["exists"]:
        shm_line = (
            f"{_size(shm['size'])}, {_size(shm['used'])} used, {_size(shm['free'])} free; "
            f"{shm['headrace_segments']} headrace segment(s), {_size(shm['headrace_bytes'])}"
        )
    else:
        shm_line = "missing"
    extras = ", ".join(f"{name} {v}" if v else f"{name} -" for name, v in f["extras"].items())
    left = f["leftovers"]
    if not left["segments"] and not left["temp_folders"]:
        leftovers = "none"
    else:
        leftovers = (
            f"{len(left['segments'])} segment(s) ({_size(left['segment_bytes'])}), "
            f"{len(left['temp_folders'])} temp folder(s) of dead programs"
        )
        if left["removed_segments"] or left["removed_temp_folders"]:
            leftovers += (
                f"; removed {left['removed_segments']} segment(s) and "
                f"{left['removed_temp_folders']} temp folder(s)"
            )
    lines = [
        f"headrace {f['headrace']}, numpy {f['numpy']}",
        f"python     {_DISPLAY.get(py['implementation'], py['implementation'])} "
        f"{py['version']} ({py['executable']})",
        f"cores      {cpu['usable']} usable: {cpu['count']} on the machine, CPU affinity "
        f"{cpu['affinity']}, cgroup quota {quota}",
        f"memory     {_size(mem['total'])} total, {_size(mem['available'])} available, "
        f"cgroup limit {limit}",
        f"{shm['path']:<10} {shm_line}",
        f"start      {methods}",
        f"extras     {extras}; dot program {'found' if f['dot'] else '-'}",
        f"leftovers  {leftovers}",
    ]
    return lines


def main(args: argparse.Namespace) -> int:
    findings = examine(args.clean)
    for line in text(findings):
        print(line)
    if args.json is not None:
        write_json(args.json, findings)
    if findings["problems"]:
        for problem in findings["problems"]:
            say(NAME, f"PROBLEM: {problem}")
        return FAILED
    print("headrace doctor: OK")
    return OK
