"""Tables from the suite's JSON: for the terminal, and the whole of BENCHMARKS.md.

Regenerate BENCHMARKS.md from a run's JSON (never edit it by hand)::

    python -m benchmarks.report benchmarks/results.json --markdown BENCHMARKS.md
    (add ``--cold benchmarks/results-cold.json`` for the one-shot runs)

Reads only the JSON (and the standard library), so it renders a run made on another machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Entry = dict[str, Any]

METHOD = """\
How these figures are made (`benchmarks/`, run by `headrace bench`):

- Each (workload, system) runs in a fresh interpreter, in its own process session that is
  killed afterwards. The clock starts after the imports. A timed run first does a small
  warm-up job (a tenth of the items) and then times the full job: building the pool or
  pipeline, consuming every result, shutting it down. The warm-up pays for what a program pays
  once (a start-method server, imports in the workers); W6 measures that cost on its own.
- Repetitions are interleaved across systems (the order rotates each repetition), so that drift
  on a shared machine hits every system alike. Each cell gives the median, and min-max, of the
  timed runs; "vs best peer" is the median over the best peer's median (for time in ms and
  memory, lower is better; for the other figures, higher is better).
- Memory: the peak proportional set size (PSS, from `/proc/PID/smaps_rollup`), summed over every
  process of the run's session (parent, workers, helpers), sampled every 10 ms from outside in a
  separate, untimed run; in parentheses, the PSS when the case started (after its imports).
- headrace runs with its defaults; each peer with its defaults and, where a setting matters,
  its best honest configuration (settings column). Peers that are not installed are skipped.
- GB/s are decimal: 10^9 bytes per second."""


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    return data


def save(data: dict[str, Any], path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Cells


def _number(metric: Entry, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * metric['scale']:,.{metric['digits']}f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> str:
    """A Markdown table with padded columns, readable as it is in a terminal."""
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]

    def line(cells: Sequence[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        padded = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in pairs]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if i in right else "-" * (w + 2) for i, w in enumerate(widths)
        )
        + "|"
    )
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def _system(row: Entry) -> str:
    return f"**{row['system']}**" if row["kind"] == "headrace" else row["system"]


def workload_table(entry: Entry) -> str:
    headers = ["system", "settings"]
    right: set[int] = set()
    for metric in entry["metrics"]:
        right |= {len(headers), len(headers) + 1, len(headers) + 2}
        headers += [f"{metric['label']} (median)", "min-max", "vs best peer"]
    with_memory = entry["memory"] and any(r.get("memory") for r in entry["rows"])
    if with_memory:
        right |= {len(headers), len(headers) + 1}
        headers += ["peak PSS MB (at start)", "vs best peer"]
    headers.append("notes")
    rows = []
    for row in entry["rows"]:
        cells = [_system(row), row["settings"]]
        for metric in entry["metrics"]:
            stats = row["stats"].get(metric["key"])
            if stats is None:
                cells += ["-", "-", "-"]
                continue
            spread = f"{_number(metric, stats['min'])}-{_number(metric, stats['max'])}"
            cells += [
                _number(metric, stats["median"]),
                spread,
                _ratio(row["ratio"].get(metric["key"])),
            ]
        if with_memory:
            mem = row.get("memory")
            cells += (
                [f"{mem['peak_mb']:,.0f} ({mem['start_mb']:,.0f})", _ratio(row.get("memory_ratio"))]
                if mem
                else ["-", "-"]
            )
        notes = [row["note"]] if row["note"] else []
        if row.get("killed"):
            notes.append(f"{len(row['killed'])} helper process(es) killed after the run")
        cells.append("; ".join(notes))
        rows.append(cells)
    return _table(headers, rows, right)


def _params(entry: Entry) -> str:
    return ", ".join(
        f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in entry["params"].items()
    )


def workload_text(entry: Entry) -> str:
    """The workload's title and table, for the terminal."""
    return f"\n{entry['name']}: {entry['title']} ({_params(entry)})\n{workload_table(entry)}\n"


#: The physical references (benchmarks/workloads/references.py measures them).
REFERENCES = {
    "memcpy": "memcpy of 8 MiB (NumPy copy into a touched buffer)",
    "fresh": "copy of 8 MiB into freshly mapped memory (page faults included)",
    "pickle": "pickle dumps + loads of an 8 MiB array",
    "pipe": "8 MiB through a multiprocessing.Pipe from another process",
}


def references_table(entry: Entry) -> str:
    rows = []
    stats = (
        entry["rows"][0]["stats"] if entry["rows"] and entry["rows"][0]["status"] == "ok" else {}
    )
    for name, label in REFERENCES.items():
        ms = stats.get(f"{name}_ms", {}).get("median")
        gbs = stats.get(f"{name}_gb_per_s", {}).get("median")
        if stats and ms is None:
            continue  # not measured by the suite that made this file
        rows.append(
            [label, "-" if ms is None else f"{ms:.2f}", "-" if gbs is None else f"{gbs:.2f}"]
        )
    return _table(["reference", "ms per 8 MiB (median)", "GB/s"], rows, {1, 2})


def references_text(entry: Entry) -> str:
    note = entry["rows"][0]["note"] if entry["rows"] else "not run"
    return f"\nPhysical references on this machine\n{references_table(entry)}\n" + (
        f"{note}\n" if note else ""
    )


# ---------------------------------------------------------------------------------------------
# The targets the issues set (3: process backend, 5: stream sampling), read off the figures


def _find(data: dict[str, Any], workload: str, key: str) -> Entry | None:
    for entry in data["workloads"]:
        if entry["name"] == workload:
            for row in entry["rows"]:
                if row["key"] == key and row["status"] == "ok":
                    return row  # type: ignore[no-any-return]
    return None


def _median(row: Entry | None, metric: str) -> float | None:
    if row is None or metric not in row["stats"]:
        return None
    return float(row["stats"][metric]["median"])


def _peak(row: Entry | None) -> float | None:
    return None if row is None or not row.get("memory") else float(row["memory"]["peak_mb"])


Target = tuple[int, str, str, Callable[[dict[str, Any]], tuple[float | None, str, bool | None]]]


def _at_least(
    value: float | None, bound: float | None, fmt: str
) -> tuple[float | None, str, bool | None]:
    if value is None or bound is None:
        return None, "not measured", None
    return value, fmt.format(value=value, bound=bound), value >= bound


def _at_most(
    value: float | None, bound: float | None, fmt: str
) -> tuple[float | None, str, bool | None]:
    if value is None or bound is None:
        return None, "not measured", None
    return value, fmt.format(value=value, bound=bound), value <= bound


def _ratio_of(data: dict[str, Any], workload: str, other: str, metric: str) -> float | None:
    """headrace's best median (of its configurations) over the median of row ``other``."""
    mine = [
        float(row["stats"][metric]["median"])
        for entry in data["workloads"]
        if entry["name"] == workload
        for row in entry["rows"]
        if row["kind"] == "headrace" and metric in row["stats"]
    ]
    theirs = _median(_find(data, workload, other), metric)
    return None if not mine or not theirs else max(mine) / theirs


TARGETS: list[Target] = [
    (
        3,
        "W2a",
        "GB/s ≥ 3x torch DataLoader",
        lambda d: _at_least(_ratio_of(d, "W2a", "dataloader", "gb_per_s"), 3.0, "{value:.2f}x"),
    ),
    (
        3,
        "W2a",
        "peak PSS ≤ 150 MB",
        lambda d: _at_most(_peak(_find(d, "W2a", "headrace")), 150.0, "{value:.0f} MB"),
    ),
    (
        3,
        "W2b",
        "≥ 3 GB/s",
        lambda d: _at_least(
            _median(_find(d, "W2b", "headrace"), "gb_per_s"), 3.0, "{value:.2f} GB/s"
        ),
    ),
    (
        3,
        "W2b",
        "peak PSS ≤ 150 MB",
        lambda d: _at_most(_peak(_find(d, "W2b", "headrace")), 150.0, "{value:.0f} MB"),
    ),
    (
        3,
        "W3",
        "speedup ≥ 1.95 over serial",
        lambda d: _at_least(_median(_find(d, "W3", "headrace"), "speedup"), 1.95, "{value:.2f}"),
    ),
    (
        3,
        "W6",
        "first pipeline ≤ 100 ms",
        lambda d: _at_most(
            _median(_find(d, "W6", "headrace"), "first_ms"), 100.0, "{value:.1f} ms"
        ),
    ),
    (
        3,
        "W6",
        "next pipelines no slower than ProcessPoolExecutor with fork",
        lambda d: _at_most(
            _median(_find(d, "W6", "headrace"), "next_ms"),
            _median(_find(d, "W6", "ppe"), "next_ms"),
            "{value:.1f} ms (ProcessPoolExecutor: {bound:.1f} ms)",
        ),
    ),
]


TARGETS += [
    (
        5,
        "W5a",
        "batches/s ≥ 2x pescador",
        lambda d: _at_least(_ratio_of(d, "W5a", "pescador", "batches_per_s"), 2.0, "{value:.2f}x"),
    ),
    (
        5,
        "W5b",
        "batches/s ≥ 2x pescador's ZMQStreamer (headrace's faster form)",
        lambda d: _at_least(_ratio_of(d, "W5b", "pescador", "batches_per_s"), 2.0, "{value:.2f}x"),
    ),
]


def _ratio_to_row(
    data: dict[str, Any], workload: str, mine: str, other: str, metric: str
) -> float | None:
    """The median of row ``mine`` over the median of row ``other``, in one workload."""
    a = _median(_find(data, workload, mine), metric)
    b = _median(_find(data, workload, other), metric)
    return None if a is None or not b else a / b


def _ratio_to_best_peer(
    data: dict[str, Any], workload: str, mine: str, metric: str
) -> float | None:
    """The median of row ``mine`` over the best median among the peers' rows."""
    a = _median(_find(data, workload, mine), metric)
    peers = [
        _median(row, metric)
        for entry in data["workloads"]
        if entry["name"] == workload
        for row in entry["rows"]
        if row["kind"] == "peer" and row["status"] == "ok"
    ]
    best = max((p for p in peers if p), default=None)
    return None if a is None or not best else a / best


# Training input (issue 10), file jobs (issue 12), shared arrays (issue 13).
TARGETS += [
    (
        10,
        "P1",
        "batches/s ≥ 1.2x torch DataLoader",
        lambda d: _at_least(
            _ratio_to_row(d, "P1", "headrace", "dataloader", "batches_per_s"), 1.2, "{value:.2f}x"
        ),
    ),
    (
        12,
        "W4",
        "files/s ≥ 1.2x the best peer",
        lambda d: _at_least(
            _ratio_to_best_peer(d, "W4", "headrace", "files_per_s"), 1.2, "{value:.2f}x"
        ),
    ),
    (
        13,
        "W7",
        "memmap input: input GB/s ≥ 1.3x joblib",
        lambda d: _at_least(
            _ratio_to_row(d, "W7", "headrace", "joblib-memmap", "gb_per_s"), 1.3, "{value:.2f}x"
        ),
    ),
    (
        13,
        "W7",
        "in-memory input: input GB/s ≥ 1.3x joblib",
        lambda d: _at_least(
            _ratio_to_row(d, "W7", "headrace-inmemory", "joblib", "gb_per_s"), 1.3, "{value:.2f}x"
        ),
    ),
]


# The Ray engine (issue 14): headrace on a local Ray beside Ray Data, order kept by both.
TARGETS += [
    (
        14,
        "W1",
        "on Ray: items/s ≥ 5x Ray Data map",
        lambda d: _at_least(
            _ratio_to_row(d, "W1", "headrace-ray", "ray-data", "items_per_s"), 5.0, "{value:.1f}x"
        ),
    ),
    (
        14,
        "W1",
        "on Ray: items/s ≥ 1.0x Ray Data map_batches",
        lambda d: _at_least(
            _ratio_to_row(d, "W1", "headrace-ray", "ray-data-batches", "items_per_s"),
            1.0,
            "{value:.2f}x",
        ),
    ),
    (
        14,
        "W2a",
        "on Ray: GB/s ≥ 1.0x Ray Data",
        lambda d: _at_least(
            _ratio_to_row(d, "W2a", "headrace-ray", "ray-data", "gb_per_s"), 1.0, "{value:.2f}x"
        ),
    ),
    (
        14,
        "W3",
        "on Ray: speedup ≥ 1.0x Ray Data's",
        lambda d: _at_least(
            _ratio_to_row(d, "W3", "headrace-ray", "ray-data", "speedup"), 1.0, "{value:.2f}x"
        ),
    ),
]


# Chunks end to end (issue 9): small items at near-native speed on every backend.
TARGETS += [
    (
        9,
        "W1",
        "items/s ≥ 1.0x multiprocessing.Pool imap with a tuned chunksize",
        lambda d: _at_least(_ratio_of(d, "W1", "pool-tuned", "items_per_s"), 1.0, "{value:.2f}x"),
    ),
    (
        9,
        "W1t",
        "2 threads: items/s ≥ 0.2x the plain loop",
        lambda d: _at_least(
            _ratio_to_row(d, "W1t", "headrace", "loop", "items_per_s"), 0.2, "{value:.2f}x"
        ),
    ),
    (
        9,
        "W1t",
        "2 threads: items/s ≥ 20x ThreadPoolExecutor.map",
        lambda d: _at_least(
            _ratio_to_row(d, "W1t", "headrace", "tpe", "items_per_s"), 20.0, "{value:.0f}x"
        ),
    ),
    (
        9,
        "W1t",
        "inline map: items/s ≥ 0.3x the plain loop",
        lambda d: _at_least(
            _ratio_to_row(d, "W1t", "headrace-inline", "loop", "items_per_s"), 0.3, "{value:.2f}x"
        ),
    ),
]


#: Title and explanation of the goals table, in the terminal and in BENCHMARKS.md.
GOALS_TITLE = "Goals: what headrace aims for, and where it stands on this machine"
GOALS_INTRO = (
    "Each goal is headrace with its default settings on one workload above, against a fixed\n"
    "bound or against a peer measured in the same run. 'not yet' marks a goal headrace misses\n"
    "today; KNOWN_GAPS.md says why."
)


def targets_table(data: dict[str, Any]) -> str:
    rows = []
    ran = {entry["name"] for entry in data["workloads"]}
    for _issue, workload, text, judge in TARGETS:
        if workload not in ran:
            continue
        _, shown, met = judge(data)
        verdict = {True: "met", False: "not yet", None: "not measured"}[met]
        rows.append([workload, text, shown, verdict])
    headers = ["workload", "goal (headrace, default settings)", "measured (median)", "status"]
    return _table(headers, rows, set())


def goals_text(data: dict[str, Any]) -> str:
    """The goals table with its title and explanation, for a terminal."""
    return f"{GOALS_TITLE}\n{GOALS_INTRO}\n\n{targets_table(data)}"


# ---------------------------------------------------------------------------------------------
# BENCHMARKS.md


def _machine(data: dict[str, Any]) -> str:
    m = data["machine"]
    gib = 1 << 30
    parts = [
        f"{m['cores']} cores ({m['usable_cores']} usable), {m['cpu']}",
        f"{m['ram_bytes'] / gib:.0f} GiB RAM" if m.get("ram_bytes") else None,
        f"/dev/shm {m['dev_shm_bytes'] / gib:.0f} GiB" if m.get("dev_shm_bytes") else None,
        m["platform"],
        m["python"],
    ]
    return "; ".join(p for p in parts if p)


def _context(data: dict[str, Any]) -> list[str]:
    """The checkout measured and how busy the machine was (absent from older files)."""
    lines = []
    if data.get("checkout"):
        lines.append(f"- headrace measured at commit {data['checkout']}.")
    load = data.get("load_average")
    if load and "end" in load:
        lines.append(
            f"- Load average (1 min) at the start and the end of the run: {load['start']:.1f}, "
            f"{load['end']:.1f} on {data['machine']['cores']} cores. The machine may be shared: "
            "the min-max columns show how much the figures moved."
        )
    return lines


def cold_section(cold: dict[str, Any]) -> list[str]:
    """The tables of a `headrace bench --cold` run: what a one-shot script pays."""
    lines = [
        "## One-shot runs (no warm-up)",
        "",
        "What a script that runs one job and exits pays: each case times its first job in a "
        "fresh interpreter, worker start-up included (`--cold`). From one run on "
        f"{cold['date']}: `{cold['command']}` ({cold['elapsed_s'] / 60:.0f} min), "
        f"{cold['repeats']} timed runs per case.",
        *_context(cold),
        "",
    ]
    for entry in cold["workloads"]:
        lines += [f"### {entry['name']} one-shot: {entry['title']}", "", workload_table(entry), ""]
    return lines


def markdown(
    data: dict[str, Any],
    source: str = "benchmarks/results.json",
    cold: dict[str, Any] | None = None,
) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in data["versions"].items() if v)
    absent = ", ".join(k for k, v in data["versions"].items() if not v)
    kind = "quick run (`--quick`: smaller jobs, 1 repetition)" if data["quick"] else "full run"
    memory = "one separate sampling run per case" if data["memory_sampled"] else "not sampled"
    lines = [
        "# Benchmarks",
        "",
        f"<!-- Generated by `python -m benchmarks.report {source} --markdown BENCHMARKS.md`;",
        "     do not edit by hand: rerun the suite and regenerate. -->",
        "",
        f"headrace against its peers, side by side, from one {kind} on {data['date']}.",
        "",
        f"- Command: `{data['command']}` ({data['elapsed_s'] / 60:.0f} min)",
        f"- Machine: {_machine(data)}",
        f"- Start methods: headrace's process backend uses its default (forkserver on Linux); the "
        f"multiprocessing-based peers use multiprocessing's default here "
        f"(`{data['machine']['multiprocessing_start_method']}`) unless the settings say "
        "otherwise; joblib uses loky.",
        f"- headrace backend measured: `{data['backend']}`. Timed runs per case: "
        f"{data['repeats']}; memory: {memory}.",
        f"- Versions: {versions}" + (f". Not installed: {absent}." if absent else "."),
        *_context(data),
        "",
        METHOD,
        "",
        "## Physical references",
        "",
        references_table(data["references"]),
        "",
        f"## {GOALS_TITLE.split(':')[0]}",
        "",
        GOALS_INTRO.replace("\n", " ").replace("above", "below"),
        "",
        targets_table(data),
        "",
    ]
    for entry in data["workloads"]:
        lines += [f"## {entry['name']}: {entry['title']}", "", f"Sizes: {_params(entry)}.", ""]
        lines += [workload_table(entry), ""]
        lines += [*entry["notes"], ""] if entry["notes"] else []
    if cold is not None:
        lines += cold_section(cold)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.report",
        description="Render the tables of a `headrace bench --json` file.",
    )
    parser.add_argument("json", type=Path, help="the file `headrace bench --json` wrote")
    parser.add_argument(
        "--markdown", type=Path, help="write BENCHMARKS.md here instead of printing the tables"
    )
    parser.add_argument(
        "--cold", type=Path, help="a `headrace bench --cold --json` file to add as one-shot runs"
    )
    args = parser.parse_args(argv)
    data = load(args.json)
    cold = load(args.cold) if args.cold is not None else None
    if args.markdown is None:
        print(references_text(data["references"]))
        for entry in data["workloads"]:
            print(workload_text(entry))
        print(goals_text(data))
        return 0
    args.markdown.write_text(markdown(data, str(args.json), cold), encoding="utf-8")
    print(f"wrote {args.markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
