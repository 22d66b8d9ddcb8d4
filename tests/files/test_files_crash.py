"""Crashes leave complete outputs only, and ``resume=True`` then does exactly the rest."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path

import numpy as np
from filefaults import DEADLINE_S, kill_marked, run_child, start_child, wait_gone

FILES = 8

JOB = """
import os, signal, sys, time
from pathlib import Path
import numpy as np
import headrace as hr

WORK = Path({work!r})

def write(data, path, **control):
    with open(path, "wb") as out:
        np.save(out, data)
        out.flush()
        kill = WORK / ("kill-on-" + path.rpartition("/")[2].split(".")[1][2:])
        if kill.exists():
            kill.unlink()
            out.write(b"partial")  # half an output, then the worker dies mid-write
            out.flush()
            os.kill(os.getpid(), signal.SIGKILL)

def process(data, **control):
    while (WORK / "block").exists() and data[0] >= 3:
        time.sleep(0.01)  # stands for slow work; the test kills the parent meanwhile
    return data * 10

job = hr.FileJob(process, read=np.load, write=write, workers=2, backend="process",
                 meta=[lambda a, **c: {{"first": float(a[0])}}])
inputs = [str(WORK / f"in{{i}}.npy") for i in range({files})]
"""


def _inputs(work: Path) -> None:
    for i in range(FILES):
        np.save(work / f"in{i}.npy", np.full(1000, float(i)))


def _outputs_complete(outdir: Path) -> list[str]:
    names = sorted(p.name for p in outdir.iterdir() if not p.name.startswith("."))
    for name in names:
        i = int(name[2:-4])
        np.testing.assert_array_equal(np.load(outdir / name), np.full(1000, 10.0 * i))
    return names


def test_worker_killed_mid_write_leaves_complete_outputs_and_resume_redoes_it(
    tmp_path: Path,
) -> None:
    _inputs(tmp_path)
    outdir = tmp_path / "out"
    (tmp_path / "kill-on-5").touch()
    code = JOB.format(work=str(tmp_path), files=FILES)
    first = run_child(code + f"results = job.run(inputs, {str(outdir)!r})")
    statuses = [r["status"] for r in first]
    assert statuses == ["written"] * 5 + ["failed"] + ["written"] * 2
    assert first[5]["error"] == "WorkerCrashedError"
    names = _outputs_complete(outdir)
    assert "in5.npy" not in names and len(names) == FILES - 1
    assert [p.name for p in outdir.iterdir() if ".hrtmp-" in p.name], "expected a stray temp"

    second = run_child(code + f"results = job.run(inputs, {str(outdir)!r}, resume=True)")
    assert [r["status"] for r in second] == ["skipped"] * 5 + ["written"] + ["skipped"] * 2
    assert second[0]["meta"] == {"first": 0.0}  # recorded when it was written
    assert len(_outputs_complete(outdir)) == FILES
    assert not [p.name for p in outdir.iterdir() if ".hrtmp-" in p.name]

    # A crash among skipped files is named by its input's index.
    (outdir / "in6.npy").unlink()
    (tmp_path / "kill-on-6").touch()
    third = run_child(code + f"results = job.run(inputs, {str(outdir)!r}, resume=True)")
    assert [r["status"] for r in third] == ["skipped"] * 6 + ["failed", "skipped"]
    assert third[6]["error"] == "WorkerCrashedError" and third[6]["error_index"] == 6
    assert "SIGKILL" in third[6]["error_message"] or "signal" in third[6]["error_message"]


def test_parent_killed_mid_run_then_resume_finishes_exactly_the_rest(tmp_path: Path) -> None:
    _inputs(tmp_path)
    outdir = tmp_path / "out"
    (tmp_path / "block").touch()
    code = JOB.format(work=str(tmp_path), files=FILES)
    mark = uuid.uuid4().hex
    child = start_child(code + f"job.run(inputs, {str(outdir)!r})", mark)
    manifest = outdir / ".headrace-manifest.jsonl"
    try:
        deadline = time.monotonic() + DEADLINE_S
        while not (manifest.exists() and len(manifest.read_text().splitlines()) >= 3):
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the first three files were never recorded"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        child.communicate(timeout=DEADLINE_S)
        assert not wait_gone(mark, 2.0), "workers outlived their killed parent"
    finally:
        kill_marked(mark)
        if child.poll() is None:
            child.kill()
            child.communicate()
    recorded = {json.loads(line)["output"] for line in manifest.read_text().splitlines()}
    assert recorded == {"in0.npy", "in1.npy", "in2.npy"}
    _outputs_complete(outdir)

    (tmp_path / "block").unlink()
    results = run_child(code + f"results = job.run(inputs, {str(outdir)!r}, resume=True)")
    assert [r["status"] for r in results] == ["skipped"] * 3 + ["written"] * 5
    assert len(_outputs_complete(outdir)) == FILES
