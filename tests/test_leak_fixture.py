"""The leak fixture (conftest.py) counts only the shared-memory segments of this test session's
own runs: another headrace program on a shared machine must not fail unrelated tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_only_segments_of_this_session_or_of_dead_owners_count(
    request: pytest.FixtureRequest,
) -> None:
    conftest = Path(__file__).with_name("conftest.py")  # one of several modules named conftest
    _ours = request.config.pluginmanager.get_plugin(str(conftest))._ours
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    dead_pid = int(dead.stdout)
    me = os.getpid()
    mine = f"hr-{me}-a1b2c3-{me}-0001"
    orphan = f"hr-{dead_pid}-a1b2c3-{dead_pid}-0001"  # every process of its run was killed
    another_program = "hr-1-a1b2c3-1-0001"  # pid 1 is alive and not this session's
    not_headrace = "something-else"
    assert _ours({mine, orphan, another_program, not_headrace}) == {mine, orphan}
