"""What a user's script sees when a process stage goes wrong: the fix for a missing
``if __name__ == "__main__":`` guard in one line, and tracebacks that show the user's own file
and source line. Each script runs in its own interpreter, as a user runs it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TIMEOUT_S = 90
GUARD = 'add `if __name__ == "__main__":`'

UNGUARDED = textwrap.dedent(
    """
    import sys
    import headrace as hr

    def inc(x):
        return x + 1

    stream = hr.from_iterable(range(5)).map(inc, backend="process", workers=2)
    print(stream.collect(start_method=sys.argv[1]))
    """
)

FAILING = textwrap.dedent(
    """
    import sys
    import headrace as hr

    def parse(x):
        if x == 3:
            raise ValueError(f"item {x} is bad")  # the line the traceback shows
        return x

    if __name__ == "__main__":
        hr.from_iterable(range(5)).map(parse, backend="process").collect(
            start_method=sys.argv[1]
        )
    """
)

NOT_IMPORTABLE = textwrap.dedent(
    """
    import sys
    import headrace as hr

    if __name__ != "__main__":
        raise RuntimeError("this script cannot be imported")

    if __name__ == "__main__":
        hr.from_iterable(range(5)).map(abs, backend="process").collect(start_method=sys.argv[1])
    """
)


def run_script(tmp_path: Path, text: str, method: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "userscript.py"
    script.write_text(text, encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(script), method],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_script_without_the_main_guard_is_told_to_add_it(tmp_path: Path, method: str) -> None:
    done = run_script(tmp_path, UNGUARDED, method)
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()
    error = next(line for line in last if line.startswith("headrace._errors.WorkerCrashedError"))
    assert GUARD in error and "userscript.py" in error and method in error
    # No crash loop, no multiprocessing bootstrapping traceback: a short error.
    assert "crash loop" not in done.stderr and "bootstrapping phase" not in done.stderr
    assert "Traceback in the worker:" not in done.stderr  # no empty block: none was sent
    assert len(last) < 60, done.stderr[-3000:]


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_process_traceback_shows_the_users_file_and_line(tmp_path: Path, method: str) -> None:
    done = run_script(tmp_path, FAILING, method)
    assert done.returncode == 1, done.stderr[-3000:]
    worker = done.stderr.split("Traceback in the worker:", 1)[1].split("The above exception")[0]
    script = str(tmp_path / "userscript.py")
    assert f'File "{script}", line 7, in parse' in worker, worker
    assert "# the line the traceback shows" in worker, worker
    assert "<dynamic-code>" not in worker
    assert "_backends" not in worker, worker  # headrace's own frames are left out
    assert "ValueError: item 3 is bad" in worker


def test_workers_that_cannot_start_fail_the_run_instead_of_looping(tmp_path: Path) -> None:
    done = run_script(tmp_path, NOT_IMPORTABLE, "spawn")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "worker processes in a row died before they could start" in done.stderr
    assert "this script cannot be imported" in done.stderr  # the workers' own output
