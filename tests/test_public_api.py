"""The public surface: ``headrace.__all__`` lists exactly what the package exports (DESIGN §2)."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import headrace

#: Names DESIGN.md fixes; more may be added, none of these may go.
DESIGN_NAMES = (
    "Stream",
    "Run",
    "Report",
    "StageSnapshot",
    "ErrorRecord",
    "from_iterable",
    "merge",
    "zip",
    "run",
    "to_dot",
    "rng",
    "HeadraceError",
    "GraphError",
    "WorkerCrashedError",
    "StageTimeoutError",
    "ClosedError",
    "ArrayJob",
)

#: Heavy or optional dependencies that ``import headrace`` must not import (DESIGN §2.9, STYLE).
OPTIONAL_MODULES = ("ray", "torch", "rich", "graphviz", "zmq", "sklearn")


def _is_exported(value: object) -> bool:
    # Submodules are reached as attributes, not exported; `from __future__ import annotations`
    # leaves a name behind that nobody exports.
    return not isinstance(value, types.ModuleType) and type(value).__module__ != "__future__"


def test_all_lists_every_public_name() -> None:
    public = {n for n in dir(headrace) if not n.startswith("_")}
    exported = {n for n in public if _is_exported(getattr(headrace, n))}
    missing = sorted(exported - set(headrace.__all__))
    assert not missing, f"public names missing from headrace.__all__: {missing}"


def test_all_names_exist_once() -> None:
    absent = [name for name in headrace.__all__ if not hasattr(headrace, name)]
    assert not absent, f"headrace.__all__ names that do not exist: {absent}"
    duplicated = sorted({n for n in headrace.__all__ if headrace.__all__.count(n) > 1})
    assert not duplicated, f"headrace.__all__ lists these more than once: {duplicated}"
    private = [name for name in headrace.__all__ if name.startswith("_")]
    assert not private, f"headrace.__all__ exports private names: {private}"


def test_design_names_exist() -> None:
    missing = [name for name in DESIGN_NAMES if name not in headrace.__all__]
    assert not missing, f"names fixed by DESIGN.md missing from headrace.__all__: {missing}"


def test_error_tree_has_one_root() -> None:
    for name in (
        "GraphError",
        "WorkerCrashedError",
        "StageTimeoutError",
        "ClosedError",
        "RemoteError",
        "SerializationError",
    ):
        assert issubclass(getattr(headrace, name), headrace.HeadraceError), name
    assert issubclass(headrace.HeadraceError, Exception)


def test_import_does_not_pull_optional_dependencies() -> None:
    code = (
        "import json, sys\n"
        "import headrace\n"
        f"wanted = {OPTIONAL_MODULES!r}\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(wanted))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    imported = json.loads(done.stdout.strip().splitlines()[-1])
    assert imported == [], f"`import headrace` imported optional dependencies: {imported}"


def test_import_and_a_process_worker_without_arrays_stay_light() -> None:
    """``import headrace`` loads neither NumPy nor the domains, and a process pipeline of
    plain items never makes its parent or its workers import NumPy (a worker starts sooner)."""
    code = (
        "import json, sys\n"
        "import headrace as hr\n"
        "after_import = sorted(m for m in sys.modules if m == 'numpy' or m.startswith("
        "('headrace._sampling', 'headrace._files', 'headrace._arrays')))\n"
        "def probe(x):\n"
        "    import sys\n"
        "    return 'numpy' in sys.modules\n"
        "stream = hr.from_iterable(range(4)).map(probe, workers=2, backend='process')\n"
        "in_workers = stream.collect()\n"
        "print(json.dumps([after_import, in_workers, 'numpy' in sys.modules]))\n"
        "hr.from_iterable(range(2)).map(abs).collect()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    after_import, in_workers, in_parent = json.loads(done.stdout.strip().splitlines()[-1])
    assert after_import == [], f"`import headrace` imported {after_import}"
    assert in_workers == [False] * 4, "a process worker of plain items imported NumPy"
    assert in_parent is False, "a process pipeline of plain items imported NumPy in the parent"
