"""``headrace files`` end to end, in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

JOB = """
import numpy as np
import headrace as hr

def process(data, factor=1, **control):
    return data * factor

def stats(data, **control):
    return {"first": float(data[0])}

job = hr.FileJob(process, read=np.load, write=lambda a, path, **c: np.save(path, a),
                 meta=[stats], workers=2)
"""


def headrace(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headrace", "files", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )


def test_files_runs_a_job_from_user_code_and_resumes(tmp_path: Path) -> None:
    (tmp_path / "myjob.py").write_text(JOB)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        np.save(data / f"a{i}.npy", np.full(3, float(i)))
    (data / "bad.npy").write_bytes(b"garbage")
    (tmp_path / "list.txt").write_text("# the last two\ndata/a2.npy\ndata/a3.npy\n")

    done = headrace(
        "myjob:job",
        "data/a[01].npy",
        "@list.txt",
        "--outdir",
        "out",
        "--set",
        "factor=3",
        "--json",
        "results.json",
        "--no-progress",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "written" in done.stdout and "4" in done.stdout
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["counts"]["written"] == 4
    assert [r["meta"]["first"] for r in report["results"]] == [0.0, 3.0, 6.0, 9.0]
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "a2.npy"), np.full(3, 6.0))

    again = headrace(
        "myjob.py:job",
        "data/a*.npy",
        "--outdir",
        "out",
        "--set",
        "factor=3",
        "--resume",
        "--json",
        "again.json",
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "again.json").read_text())["counts"]["skipped"] == 4

    failed = headrace(
        "myjob:job",
        "data/*.npy",
        "--outdir",
        "out",
        "--workers",
        "1",
        "--no-progress",
        cwd=tmp_path,
    )
    assert failed.returncode == 1
    assert "FAILED" in failed.stdout and "bad.npy" in failed.stdout


def test_files_usage_errors_exit_2(tmp_path: Path) -> None:
    (tmp_path / "myjob.py").write_text(JOB)
    for args in (
        ["nocolon", "x", "--outdir", "o"],
        ["myjob:missing", "x", "--outdir", "o"],
        ["myjob:job", "nothing*.npy", "--outdir", "o"],
    ):
        done = headrace(*args, cwd=tmp_path)
        assert done.returncode == 2, (args, done.stderr)
        assert "headrace files: error:" in done.stderr
