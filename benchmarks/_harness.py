"""The suite's driver: plan the (workload, system) runs, run them interleaved, summarise.

For each workload, repetition r runs every selected case once, each in a fresh interpreter, the
order rotated by one each repetition, so that drift on a shared machine hits every system
alike; then, when memory is sampled, one more run per case samples its peak PSS. A case that
fails is reported with its error and not run again; a peer that is not installed is shown as
skipped.
"""

from __future__ import annotations

import compileall
import contextlib
import datetime
import importlib.metadata
import importlib.util
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from . import report
from ._core import BACKEND_ENV, COLD_ENV, DEFAULT_BACKEND, Case, Workload
from ._procs import run_child
from .workloads import NAMES, REFERENCES, get

#: The checkout that holds this suite; children find the `benchmarks` package under it.
ROOT = Path(__file__).resolve().parent.parent
#: Timed runs per (workload, system): full run, --quick.
REPEATS, QUICK_REPEATS = 5, 1
#: Seconds a single child may take before it is killed and its case reported as failed.
TIMEOUT_S, QUICK_TIMEOUT_S = 300.0, 60.0
PEERS = ("joblib", "mpire", "pypeln", "torch", "pescador", "minipipe", "neuraxle")
INSTALL_HINT = 'pip install -e ".[bench]"'
#: Module a headrace case needs -> (the package that provides it, headrace's extra for it).
EXTRAS = {"zmq": ("pyzmq", "zmq"), "torch": ("torch", "torch"), "ray": ("ray", "ray")}


def _row(case: Case, backend: str, params: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "key": case.key,
        "system": case.system,
        "settings": case.settings.replace("{backend}", backend),
        "kind": case.kind,
        "status": "pending",
        "params": params,
        "note": "",
        "runs": [],
        "import_s": [],
        "values": {},
        "stats": {},
        "ratio": {},
        "memory": None,
        "memory_ratio": None,
        "killed": [],
    }
    if case.scale != 1:
        row["params"] = {k: max(1, round(v * case.scale)) for k, v in params.items()}
        row["note"] = (
            f"n={row['params']['n']:,} instead of {params['n']:,}: this system is too slow "
            "for the full size"
        )
    missing = [m for m in case.needs if importlib.util.find_spec(m) is None]
    if missing:
        row["status"] = "skipped"
        row["note"] = f"skipped: {', '.join(missing)} not installed ({INSTALL_HINT})"
        if case.kind == "headrace":  # a headrace feature behind an extra: name the extra
            extras = ", ".join(f"{EXTRAS.get(m, (m, m))[0]}" for m in missing)
            names = ",".join(EXTRAS.get(m, (m, m))[1] for m in missing)
            row["note"] = f'skipped: {extras} not installed (pip install "headrace[{names}]")'
    return row


def _selected(
    cases: tuple[Case, ...], *, quick: bool, peers: bool, systems: list[str] | None
) -> list[Case]:
    """The cases to run. --quick runs each peer in one configuration: the last one listed (its
    tuned one where it has two)."""
    chosen = []
    for i, case in enumerate(cases):
        if case.engine != "local" and not peers:
            continue  # headrace on Ray is compared with Ray Data: a peer comparison
        if case.kind == "peer":
            if not peers:
                continue
            if systems and not any(
                s.lower() in f"{case.key} {case.system}".lower() for s in systems
            ):
                continue
            if quick and any(later.system == case.system for later in cases[i + 1 :]):
                continue
        chosen.append(case)
    return chosen


def _say(log: TextIO, text: str) -> None:
    print(text, file=log, flush=True)


def _run_workload(
    workload: Workload,
    rows: list[dict[str, Any]],
    *,
    quick: bool,
    repeats: int,
    memory: bool,
    backend: str,
    timeout: float,
    log: TextIO,
) -> None:
    params = workload.quick if quick else workload.full
    for rep in range(repeats):
        active = [r for r in rows if r["status"] == "pending"]
        shift = rep % len(active) if active else 0
        for row in active[shift:] + active[:shift]:
            if row["status"] != "pending":
                continue
            outcome = run_child(
                ROOT,
                workload.name,
                row["key"],
                row["params"],
                backend=backend,
                sample=False,
                timeout=timeout,
            )
            row["killed"].extend(outcome.killed)
            where = f"[{workload.name} {rep + 1}/{repeats}] {row['system']} ({row['key']})"
            if outcome.status == "ok":
                assert outcome.result is not None
                row["runs"].append(outcome.result)
                row["import_s"].append(outcome.import_s)
                figures = workload.figures(outcome.result, row["params"])
                shown = ", ".join(
                    f"{m.show(figures[m.key])} {m.label}"
                    for m in workload.metrics
                    if m.key in figures
                )
                _say(log, f"{where}: {shown or 'done'} ({outcome.wall_s:.1f} s)")
            else:
                row["status"] = outcome.status
                row["note"] = f"{outcome.status}: {outcome.error}"
                row["runs"] = []
                _say(log, f"{where}: {row['note']}")
    for row in rows:
        if row["status"] == "pending":
            row["status"] = "ok" if row["runs"] else "failed"
    if memory and workload.memory:
        for row in rows:
            if row["status"] != "ok":
                continue
            outcome = run_child(
                ROOT,
                workload.name,
                row["key"],
                row["params"],
                backend=backend,
                sample=True,
                timeout=timeout,
            )
            row["killed"].extend(outcome.killed)
            where = f"[{workload.name} memory] {row['system']} ({row['key']})"
            if outcome.status == "ok" and outcome.peak_pss:
                row["memory"] = {
                    "peak_mb": outcome.peak_pss / 1e6,
                    "start_mb": (outcome.start_pss or 0) / 1e6,
                }
                _say(log, f"{where}: peak PSS {outcome.peak_pss / 1e6:.0f} MB")
            else:
                _say(log, f"{where}: no sample ({outcome.error})")
    _summarise(workload, rows, params)


def _summarise(workload: Workload, rows: list[dict[str, Any]], params: dict[str, Any]) -> None:
    """Figures per run, then median / min / max, then the ratio to the best peer."""
    for row in rows:
        if row["status"] != "ok":
            continue
        per_run = [workload.figures(run, row["params"]) for run in row["runs"]]
        for metric in workload.metrics:
            values = [f[metric.key] for f in per_run if metric.key in f]
            if values:
                row["values"][metric.key] = values
    if workload.finish is not None:
        workload.finish(rows, params)
    for row in rows:
        for key, values in row["values"].items():
            row["stats"][key] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
            }
    peers = [r for r in rows if r["kind"] == "peer" and r["status"] == "ok"]
    for metric in workload.metrics:
        medians = [r["stats"][metric.key]["median"] for r in peers if metric.key in r["stats"]]
        if not medians:
            continue
        best = max(medians) if metric.higher_is_better else min(medians)
        for row in rows:
            if metric.key in row["stats"] and best:
                row["ratio"][metric.key] = row["stats"][metric.key]["median"] / best
    peaks = [r["memory"]["peak_mb"] for r in peers if r["memory"]]
    if peaks:
        for row in rows:
            if row["memory"]:
                row["memory_ratio"] = row["memory"]["peak_mb"] / min(peaks)


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _compile_sources() -> None:
    """Write the bytecode of headrace's and this suite's sources, as installing headrace does.

    Each case starts fresh interpreters (the program, a forkserver, spawned workers); from a
    source checkout under ``PYTHONDONTWRITEBYTECODE=1`` each of them would compile headrace's
    modules again (about 0.2 s), while the peers come installed with theirs."""
    spec = importlib.util.find_spec("headrace")
    folders = [Path(__file__).resolve().parent]
    if spec is not None and spec.submodule_search_locations:
        folders += [Path(folder) for folder in spec.submodule_search_locations]
    for folder in folders:
        with contextlib.suppress(OSError):
            compileall.compile_dir(folder, quiet=2)


def _checkout() -> str | None:
    """The commit of the checkout measured, and whether it had uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "src"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head} (src/ with uncommitted changes)" if dirty else head


def machine() -> dict[str, Any]:
    """What the figures depend on: cores, CPU, memory, Python, start methods."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) * 1024
    shm = None
    with contextlib.suppress(OSError):
        shm = shutil.disk_usage("/dev/shm").total
    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu": model,
        "ram_bytes": ram,
        "dev_shm_bytes": shm,
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "multiprocessing_start_method": multiprocessing.get_start_method(),
    }


def run_bench(
    *,
    quick: bool = False,
    workloads: list[str] | None = None,
    json_path: Path | None = None,
    peers: bool = True,
    systems: list[str] | None = None,
    backend: str | None = None,
    repeats: int | None = None,
    memory: bool | None = None,
    cold: bool = False,
    command: str = "headrace bench",
    out: TextIO = sys.stdout,
    log: TextIO = sys.stderr,
) -> int:
    """Run the suite, print its tables on ``out`` (progress on ``log``); return the exit code.

    Exit code 0 when every headrace case produced figures, 1 when one failed, 2 for a bad
    workload name.
    """
    try:
        chosen = [get(name) for name in workloads or NAMES if name.upper() != REFERENCES]
    except KeyError as exc:
        names = ", ".join(NAMES)
        print(f"headrace bench: no workload {exc.args[0]!r}; choose among {names}", file=log)
        return 2
    references = get(REFERENCES)
    backend = backend or os.environ.get(BACKEND_ENV) or DEFAULT_BACKEND
    repeats = repeats or (QUICK_REPEATS if quick else REPEATS)
    memory = (not quick) if memory is None else memory
    timeout = QUICK_TIMEOUT_S if quick else TIMEOUT_S
    if cold:  # the children inherit it: no warm-up before the timed job
        os.environ[COLD_ENV] = "1"
    _compile_sources()
    started = time.monotonic()
    data: dict[str, Any] = {
        "suite": 1,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "quick": quick,
        "cold": cold,
        "backend": backend,
        "repeats": repeats,
        "memory_sampled": memory,
        "machine": machine(),
        "checkout": _checkout(),
        "load_average": {"start": os.getloadavg()[0]},
        "versions": {
            name: _version(name) for name in ("headrace", "numpy", "cloudpickle", *PEERS, "pyzmq")
        },
        "references": None,
        "workloads": [],
    }
    _say(
        log, f"headrace bench: {len(chosen)} workload(s), {repeats} run(s) each, backend={backend}"
    )

    ref_rows = [
        _row(case, backend, references.quick if quick else references.full)
        for case in references.cases
    ]
    _run_workload(
        references,
        ref_rows,
        quick=quick,
        repeats=repeats,
        memory=False,
        backend=backend,
        timeout=timeout,
        log=log,
    )
    data["references"] = _workload_data(references, ref_rows, quick)
    print(report.references_text(data["references"]), file=out, flush=True)

    failed: list[str] = []  # headrace cases that ran and failed: the exit code says so
    skipped: list[str] = []  # headrace cases that need an extra not installed here
    for workload in chosen:
        params = workload.quick if quick else workload.full
        cases = _selected(workload.cases, quick=quick, peers=peers, systems=systems)
        rows = [_row(case, backend, params) for case in cases]
        _run_workload(
            workload,
            rows,
            quick=quick,
            repeats=repeats,
            memory=memory,
            backend=backend,
            timeout=timeout,
            log=log,
        )
        entry = _workload_data(workload, rows, quick)
        data["workloads"].append(entry)
        print(report.workload_text(entry), file=out, flush=True)
        for row in rows:
            if row["kind"] == "headrace" and row["status"] != "ok":
                (skipped if row["status"] == "skipped" else failed).append(
                    f"{workload.name} {row['key']}: {row['note']}"
                )
    data["elapsed_s"] = time.monotonic() - started
    data["load_average"]["end"] = os.getloadavg()[0]
    if any(entry["name"] in {t[1] for t in report.TARGETS} for entry in data["workloads"]):
        print("\n" + report.goals_text(data), file=out)
    if json_path is not None:
        report.save(data, json_path)
        _say(log, f"figures written to {json_path}")
    _say(log, f"headrace bench: done in {data['elapsed_s']:.0f} s")
    for line in skipped + failed:
        _say(log, f"headrace bench: {line}")
    if failed:
        _say(log, f"headrace bench: {len(failed)} headrace case(s) failed (exit code 1)")
    return 1 if failed else 0


def _workload_data(workload: Workload, rows: list[dict[str, Any]], quick: bool) -> dict[str, Any]:
    return {
        "name": workload.name,
        "title": workload.title,
        "params": workload.quick if quick else workload.full,
        "metrics": [
            {
                "key": m.key,
                "label": m.label,
                "higher_is_better": m.higher_is_better,
                "scale": m.scale,
                "digits": m.digits,
            }
            for m in workload.metrics
        ],
        "memory": workload.memory,
        "notes": list(workload.notes),
        "rows": rows,
    }
