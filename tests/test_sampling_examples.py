"""The stream sampling examples in ``examples/`` run and print what they promise."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
#: example -> (optional module it needs, text its output must contain)
CASES = {
    "sampling_mux.py": (None, "batch (128, 30) (128,)"),
    "sampling_disk.py": (None, "npy window (32, 16) (32,)"),
    "sampling_zmq.py": ("zmq", "received (128, 30) float64"),
    "sampling_torch.py": ("torch", "epoch 2: loss"),
    "sampling_keras.py": (None, "learned"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_example_runs(name: str, tmp_path: Path) -> None:
    needs, expected = CASES[name]
    if needs is not None and importlib.util.find_spec(needs) is None:
        pytest.skip(f"{name} needs {needs}")
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout, done.stdout
