"""``headrace doctor``, run as a user runs it (in a fresh interpreter), and its parts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from headrace._cli import doctor

#: Under pytest's 60 s timeout, so that a hung command fails here with its output.
TIMEOUT_S = 45


def headrace(
    *args: str, pre: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The command line with ``args`` in a fresh interpreter, after the Python code ``pre``."""
    code = f"import sys\n{pre}\nfrom headrace._cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env={**os.environ, **(env or {})},
        check=False,
    )


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_doctor_on_this_machine(tmp_path: Path) -> None:
    done = headrace("doctor", "--json", str(tmp_path / "doctor.json"))
    findings = json.loads((tmp_path / "doctor.json").read_text(encoding="utf-8"))
    assert done.returncode == (1 if findings["problems"] else 0), done.stdout + done.stderr
    for word in ("python", "cores", "memory", "/dev/shm", "start", "extras", "leftovers"):
        assert word in done.stdout, done.stdout
    for problem in findings["problems"]:
        assert f"headrace doctor: PROBLEM: {problem}" in done.stderr
    assert findings["cpu"]["usable"] >= 1
    assert findings["cpu"]["usable"] <= findings["cpu"]["affinity"] <= findings["cpu"]["count"]
    assert findings["memory"]["total"] > 0
    assert "forkserver" in findings["start_methods"]["available"]
    assert set(findings["extras"]) == {"rich", "pyzmq", "graphviz", "torch", "ray"}
    assert findings["python"]["version"] == ".".join(map(str, sys.version_info[:3]))


def test_leftovers_of_dead_programs_are_found_and_cleaned(tmp_path: Path) -> None:
    # A stand-in for /dev/shm, so that no other program's segments are ever touched.
    shm, tmp = tmp_path / "shm", tmp_path / "tmp"
    shm.mkdir()
    tmp.mkdir()
    dead, live = dead_pid(), os.getpid()
    (shm / f"hr-{dead}-a1b2-{dead}-0").write_bytes(b"\0" * 4096)
    (shm / f"hr-{live}-c3d4-{live}-0").write_bytes(b"\0" * 4096)
    (shm / "not-headrace").write_bytes(b"x")
    (tmp / f"headrace-{dead}-zmq-abcd").mkdir()
    (tmp / f"headrace-{live}-demo-efgh").mkdir()
    (tmp / "headrace-tests-ijkl").mkdir()  # no owner in the name: never removed
    pre = (
        "import headrace._shm\nimport headrace._cli.doctor as d\n"
        f"headrace._shm.SHM_DIR = {str(shm)!r}\n"
        "d.KNOWN_BUGS = ()  # this interpreter's own bugs are not what this test checks"
    )
    env = {"TMPDIR": str(tmp)}

    found = headrace("doctor", "--json", str(tmp_path / "before.json"), pre=pre, env=env)
    assert found.returncode == 1, found.stdout + found.stderr
    assert "1 shared-memory segment(s)" in found.stderr
    assert "1 temp folder(s) of dead headrace programs" in found.stderr
    before = json.loads((tmp_path / "before.json").read_text(encoding="utf-8"))
    assert before["leftovers"]["segments"] == [f"hr-{dead}-a1b2-{dead}-0"]
    assert before["leftovers"]["temp_folders"] == [str(tmp / f"headrace-{dead}-zmq-abcd")]
    assert (shm / f"hr-{dead}-a1b2-{dead}-0").exists(), "removed without --clean"

    cleaned = headrace("doctor", "--clean", pre=pre, env=env)
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    assert "removed 1 segment(s) and 1 temp folder(s)" in cleaned.stdout
    assert sorted(p.name for p in shm.iterdir()) == [f"hr-{live}-c3d4-{live}-0", "not-headrace"]
    assert sorted(p.name for p in tmp.iterdir()) == [
        f"headrace-{live}-demo-efgh",
        "headrace-tests-ijkl",
    ]

    again = headrace("doctor", pre=pre, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "leftovers  none" in again.stdout
    assert "headrace doctor: OK" in again.stdout


@pytest.mark.parametrize(
    ("release", "fixed"),
    [
        ((3, 11, 0), "3.11.8"),
        ((3, 11, 7), "3.11.8"),
        ((3, 11, 8), None),
        ((3, 12, 0), "3.12.2"),
        ((3, 12, 1), "3.12.2"),
        ((3, 12, 2), None),
        ((3, 13, 0), None),
    ],
)
def test_interpreters_with_known_pipeline_bugs(
    release: tuple[int, int, int], fixed: str | None
) -> None:
    found = doctor.known_bugs("cpython", release)
    if fixed is None:
        assert found == []
    else:
        [problem] = found
        assert "gh-106905" in problem and "AST constructor recursion depth mismatch" in problem
        assert f"use {fixed} or later" in problem
    assert doctor.known_bugs("pypy", release) == []


def test_a_small_dev_shm_is_a_problem() -> None:
    findings = {
        "shm": {"path": "/dev/shm", "exists": True, "writable": True, "free": 64 * 2**20},
        "start_methods": {"env": None, "default": "forkserver"},
        "leftovers": {
            "segments": [],
            "segment_bytes": 0,
            "temp_folders": [],
            "removed_segments": 0,
            "removed_temp_folders": 0,
        },
    }
    [problem] = doctor.problems(findings, [])
    assert "64.0 MiB free" in problem and "--shm-size" in problem
    findings["shm"]["free"] = 8 * 2**30
    assert doctor.problems(findings, []) == []


def test_cgroup_quota_and_memory_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "CGROUP", tmp_path)
    assert doctor.cpu_quota() is None and doctor.memory_limit() is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    (tmp_path / "memory.max").write_text(f"{2 * 2**30}\n")
    assert doctor.cpu_quota() == 1.5
    assert doctor.memory_limit() == 2 * 2**30
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (tmp_path / "memory.max").write_text("max\n")
    assert doctor.cpu_quota() is None and doctor.memory_limit() is None
