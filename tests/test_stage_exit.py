"""A stage that calls sys.exit() or raises KeyboardInterrupt never ends the consumer's program.

Each case runs in its own interpreter: the bug this guards against ended the test process.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import sys
import headrace as hr

def f(x):
    if x == 3:
        {raise_}
    return x

if __name__ == "__main__":
    try:
        hr.from_iterable(range(10)).map(f, workers=2, backend={backend!r}).collect()
    except Exception as exc:
        print("caught", type(exc).__name__, type(exc.__cause__).__name__, exc.__notes__)
        sys.exit(0)
    print("not raised")
    sys.exit(5)
"""


@pytest.mark.parametrize("backend", ["thread", "process"])
@pytest.mark.parametrize("raise_", ["sys.exit(3)", "raise KeyboardInterrupt"])
def test_an_exit_inside_a_stage_is_an_error_the_consumer_catches(
    backend: str, raise_: str, tmp_path: object
) -> None:
    path = f"{tmp_path}/script.py"
    with open(path, "w") as out:
        out.write(SCRIPT.format(raise_=raise_, backend=backend))
    done = subprocess.run([sys.executable, path], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-2000:])
    cause = "SystemExit" if "exit" in raise_ else "KeyboardInterrupt"
    assert f"caught HeadraceError {cause}" in done.stdout
    assert "item 3" in done.stdout
