"""The stacked-ensemble example in ``examples/`` runs and prints what it promises."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "arrays_stacked_ensemble.py"


@pytest.mark.slow
@pytest.mark.timeout(170)  # every layer starts worker processes that import scikit-learn
def test_the_stacked_ensemble_example_runs(tmp_path: Path) -> None:
    if importlib.util.find_spec("sklearn") is None:
        pytest.skip('the example needs scikit-learn: pip install "headrace[sklearn]"')
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=160,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found = re.search(r"stacked test accuracy (\d\.\d+)", done.stdout)
    assert found, done.stdout
    assert float(found.group(1)) > 0.8, done.stdout
    assert done.stdout.count("layer 1 ") == 3, done.stdout
