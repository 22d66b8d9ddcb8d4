"""Runs one case of one workload in this fresh interpreter, and reports on stdout.

``python -m benchmarks._child WORKLOAD CASE PARAMS_JSON``, started by the harness in its own
process session. Imports what the case needs, says "start", runs the case, prints the result.
Lines meant for the harness start with `MARK`, so that whatever a peer prints is ignored.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from typing import Any

from .workloads import get

MARK = "@@headrace-bench "


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(MARK + json.dumps(event) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    name, key, params = argv
    case = get(name).case(key)
    needs = ("headrace", *case.needs) if case.kind == "headrace" else case.needs
    start = time.perf_counter()
    for module in needs:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            emit({"event": "skipped", "reason": f"cannot import {module}: {exc}"})
            return 0
    imported = time.perf_counter() - start
    emit({"event": "start"})
    try:
        result = case.run(json.loads(params))
    except BaseException as exc:
        traceback.print_exc()
        emit({"event": "error", "error": f"{type(exc).__name__}: {exc}"[:500]})
        return 1
    emit({"event": "result", "result": result, "import_s": imported})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
