"""hr.FileJob: steps, rejection, metadata, control keywords, resume, safe paths, sizing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import headrace as hr
from headrace._files._atomic import temporary_path
from headrace._files._sizing import worker_count


def load(path: str, **control: Any) -> Any:
    try:
        return np.load(path)
    except SystemError:  # CPython 3.11: `ast`, which reads the .npy header, in two threads at
        return np.load(path)  # once can fail spuriously (see KNOWN_GAPS); not what this tests


def save(data: Any, path: str, **control: Any) -> None:
    np.save(path, data)


def times(data: Any, factor: int = 10, **control: Any) -> Any:
    return data * factor


def first(data: Any, **control: Any) -> dict[str, float]:
    return {"first": float(data[0])}


@pytest.fixture
def inputs(tmp_path: Path) -> list[str]:
    folder = tmp_path / "in"
    folder.mkdir()
    paths = []
    for i in range(5):
        paths.append(str(folder / f"f{i}.npy"))
        np.save(paths[-1], np.full(8, float(i)))
    return paths


def job(**options: Any) -> hr.FileJob:
    options.setdefault("backend", "thread")
    return hr.FileJob(times, read=load, write=save, meta=[first], **options)


@pytest.mark.parametrize("backend", ["inline", "thread", "process"])
def test_every_file_is_written_with_its_metadata_in_input_order(
    inputs: list[str], tmp_path: Path, backend: str
) -> None:
    results = job(backend=backend, workers=2).run(inputs, tmp_path / "out")
    assert [r.input for r in results] == inputs
    assert [r.status for r in results] == ["written"] * 5
    assert [r.meta for r in results] == [{"first": 10.0 * i} for i in range(5)]
    for i, r in enumerate(results):
        assert r.output == str((tmp_path / "out" / f"f{i}.npy").resolve())
        np.testing.assert_array_equal(np.load(r.output), np.full(8, 10.0 * i))
    assert sorted(os.listdir(tmp_path / "out")) == [
        ".headrace-manifest.jsonl",
        *(f"f{i}.npy" for i in range(5)),
    ]


def test_a_step_returning_none_rejects_the_file(inputs: list[str], tmp_path: Path) -> None:
    def odd_only(data: Any, **control: Any) -> Any:
        return data if data[0] % 2 else None

    results = job(pre=[odd_only]).run(inputs, tmp_path / "out")
    assert [r.status for r in results] == ["rejected", "written", "rejected", "written", "rejected"]
    assert [r.output for r in results][::2] == [None] * 3
    assert sorted(os.listdir(tmp_path / "out"))[1:] == ["f1.npy", "f3.npy"]


def test_control_keywords_at_construction_are_overridden_per_run(
    inputs: list[str], tmp_path: Path
) -> None:
    results = job(factor=2).run(inputs[:2], tmp_path / "a")
    assert [r.meta.get("first") for r in results] == [0.0, 2.0], results
    results = job(factor=2).run(inputs[:2], tmp_path / "b", factor=3)
    # With the results shown: CI once saw a result here without its metadata.
    assert [r.meta.get("first") for r in results] == [0.0, 3.0], results


def test_a_step_hands_keywords_and_metadata_to_the_later_steps_of_its_file(
    inputs: list[str], tmp_path: Path
) -> None:
    def mark(data: Any, target: float = -1, **control: Any) -> Any:
        if data[0] == target:
            return hr.FileStep(data, control={"boost": 5}, meta={"boosted": True})
        return data

    def booster(data: Any, boost: int = 0, **control: Any) -> Any:
        return data + boost

    results = job(pre=[mark], post=[booster], target=3).run(inputs, tmp_path / "out")
    assert [r.meta.get("first") for r in results] == [0.0, 10.0, 20.0, 35.0, 40.0]
    assert [r.meta.get("boosted", False) for r in results] == [False] * 3 + [True, False]


def test_functions_get_only_the_keywords_they_take(inputs: list[str], tmp_path: Path) -> None:
    plain = hr.FileJob(
        lambda a, factor: a * factor,
        read=np.load,
        write=lambda a, path: np.save(path, a),
        backend="thread",
        factor=4,
        unrelated="x",
    )
    assert [r.status for r in plain.run(inputs[:2], tmp_path / "out")] == ["written"] * 2


def test_a_corrupt_input_is_one_failed_result(inputs: list[str], tmp_path: Path) -> None:
    Path(inputs[2]).write_bytes(b"not an npy file")
    results = job(backend="process", workers=2).run(inputs, tmp_path / "out")
    assert [r.status for r in results] == ["written", "written", "failed", "written", "written"]
    error = results[2].error
    assert error is not None and error.stage == "read" and error.index == 2
    assert error.type in ("ValueError", "UnpicklingError", "OSError")
    assert "Traceback" in error.traceback
    assert not results[2].ok and results[2].output is None


def test_the_temporary_keeps_the_suffix_and_sits_beside_the_output(
    inputs: list[str], tmp_path: Path
) -> None:
    seen = []

    def spy(data: Any, path: str, **control: Any) -> None:
        seen.append(path)
        np.save(path, data)

    hr.FileJob(None, read=load, write=spy, backend="thread").run(inputs[:1], tmp_path / "out")
    (path,) = seen
    assert path.endswith(".npy") and ".hrtmp-" in path
    assert Path(path).parent == (tmp_path / "out").resolve()
    assert temporary_path(Path("/x/a.fits.gz")).name.endswith(".fits.gz")


def test_a_failed_write_leaves_no_output_and_no_temporary(
    inputs: list[str], tmp_path: Path
) -> None:
    def half(data: Any, path: str, **control: Any) -> None:
        Path(path).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    results = hr.FileJob(None, read=load, write=half, backend="thread").run(
        inputs[:2], tmp_path / "out"
    )
    assert [r.status for r in results] == ["failed", "failed"]
    assert results[0].error is not None and results[0].error.stage == "write"
    assert sorted(os.listdir(tmp_path / "out")) == [".headrace-manifest.jsonl"]


def test_resume_skips_only_outputs_recorded_as_up_to_date(
    inputs: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert {r.status for r in job().run(inputs, out)} == {"written"}
    again = job().run(inputs, out, resume=True)
    assert [r.status for r in again] == ["skipped"] * 5
    assert [r.meta for r in again] == [{"first": 10.0 * i} for i in range(5)]
    # an input changed, an output removed, an output replaced: those three are redone
    np.save(inputs[0], np.full(8, 7.0))
    os.unlink(out / "f1.npy")
    np.save(out / "f2.npy", np.zeros(3))
    again = job().run(inputs, out, resume=True)
    assert [r.status for r in again] == ["written"] * 3 + ["skipped"] * 2
    assert again[0].meta == {"first": 70.0}
    # without resume everything is redone
    assert [r.status for r in job().run(inputs, out)] == ["written"] * 5


def test_changing_a_control_keyword_or_the_code_makes_resume_redo(
    inputs: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    job(factor=10).run(inputs, out)
    assert {r.status for r in job(factor=10).run(inputs, out, resume=True)} == {"skipped"}
    assert {r.status for r in job(factor=10).run(inputs, out, resume=True, factor=11)} == {
        "written"
    }
    assert {r.status for r in job(factor=10).run(inputs, out, resume=True)} == {"written"}

    def other(data: Any, factor: int = 10, **control: Any) -> Any:
        return data * factor + 1

    changed = hr.FileJob(other, read=load, write=save, meta=[first], backend="thread", factor=10)
    assert {r.status for r in changed.run(inputs, out, resume=True)} == {"written"}


def test_output_names_that_leave_outdir_fail_those_files(inputs: list[str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "link").symlink_to(tmp_path / "in")
    names = {
        "f0.npy": "/etc/passwd",
        "f1.npy": "../escape.npy",
        "f2.npy": "link/f2_out.npy",
        "f3.npy": "sub/ok.npy",
        "f4.npy": "",
    }
    results = job(outname=lambda path, **c: names[os.path.basename(path)]).run(inputs, out)
    assert [r.status for r in results] == ["failed", "failed", "failed", "written", "failed"]
    messages = [r.error.message if r.error else "" for r in results]
    assert "absolute" in messages[0] and "'..'" in messages[1] and "symlink" in messages[2]
    assert all(r.error.stage == "outname" for r in results if r.error)
    assert (out / "sub" / "ok.npy").is_file()
    assert not (tmp_path / "escape.npy").exists() and not (tmp_path / "in" / "f2_out.npy").exists()


def test_two_inputs_with_one_output_are_refused_before_any_work(
    inputs: list[str], tmp_path: Path
) -> None:
    calls = []

    def count(data: Any, **control: Any) -> Any:
        calls.append(1)
        return data

    same = hr.FileJob(count, read=load, write=save, outname=lambda p, **c: "same.npy")
    with pytest.raises(ValueError, match="both map to output"):
        same.run(inputs, tmp_path / "out")
    assert calls == [] and not (tmp_path / "out" / "same.npy").exists()
    with pytest.raises(ValueError, match="overwrite an input"):
        job().run(inputs, Path(inputs[0]).parent)


def test_stray_temporaries_of_dead_writers_are_removed(inputs: list[str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stray = out / f".f0.hrtmp-{int(dead.stdout)}-abcd1234.npy"
    stray.write_bytes(b"torn")
    live = out / f".f1.hrtmp-{os.getpid()}-abcd1234.npy"
    live.write_bytes(b"being written")
    job().run(inputs[:1], out)
    assert not stray.exists() and live.exists()


def test_stream_composes_with_other_stages(inputs: list[str], tmp_path: Path) -> None:
    stream = job().stream(inputs, tmp_path / "out", factor=2)
    assert stream.map(lambda r: (r.status, r.meta["first"])).collect() == [
        ("written", 2.0 * i) for i in range(5)
    ]


def test_bad_arguments_are_refused_when_the_job_is_built() -> None:
    with pytest.raises(ValueError, match="backend"):
        hr.FileJob(times, backend="gpu")
    with pytest.raises(ValueError, match="workers"):
        hr.FileJob(times, workers=0)
    with pytest.raises(ValueError, match="worker_memory"):
        hr.FileJob(times, worker_memory="lots")
    with pytest.raises(TypeError, match="pre"):
        hr.FileJob(times, pre=[1])
    with pytest.raises(TypeError, match="one path"):
        hr.FileJob(times).run("a.npy", "out")


def test_worker_count_respects_cores_files_workers_and_memory() -> None:
    one_gib = 2**30
    assert worker_count(1, workers=None, worker_memory=None, largest_input=0) == 1
    assert worker_count(100, workers=1, worker_memory=None, largest_input=0) == 1
    many = worker_count(100, workers=None, worker_memory=None, largest_input=0, available=2**40)
    assert many == len(os.sched_getaffinity(0))
    fit = worker_count(
        100, workers=64, worker_memory="1GiB", largest_input=0, available=3 * one_gib
    )
    assert fit == min(2, many)  # 80% of 3 GiB holds two workers of 1 GiB
    assert worker_count(100, workers=None, worker_memory=one_gib, largest_input=0, available=1) == 1
    guessed = worker_count(
        100, workers=None, worker_memory=None, largest_input=one_gib, available=4 * one_gib
    )
    assert guessed == 1  # three copies of a 1 GiB input per worker
