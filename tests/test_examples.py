"""The core examples in ``examples/`` run and do what they say (the sampling ones have
``test_sampling_examples.py``)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_core_pipeline_trains_a_model_from_files(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "core_pipeline.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("epoch")] == [
        f"epoch {i}" for i in range(1, 6)
    ]
    assert "over 16 batches" in done.stdout  # 512 files in batches of 32, each epoch
    assert re.search(r"load\s+process\s+2\s+512\s+512\s", done.stdout), done.stdout
    assert lines[-1] == "OK", done.stdout
