"""One chaos scenario, run as a program in its own interpreter: ``python scenario.py SPEC``.

SPEC (JSON, made by `chaos_plan.make_scenario`) describes a pipeline of 1-4 stages and one
fault. The program builds the pipeline, runs it, injects the fault, and prints one line
``RESULT {...}``: the index of every output, the error raised (if any), every stage's figures,
the error records, and what the run left in this interpreter after it closed (threads, file
descriptors). Faults that kill this interpreter print nothing; the harness checks what they
left behind from outside.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import threading
import time

import numpy as np

import headrace as hr

#: Seconds this interpreter's headrace threads get to end after the run closed.
THREADS_GONE_S = 2.0


def index_of(item: object) -> int:
    return int(item.flat[0]) if isinstance(item, np.ndarray) else int(item)  # type: ignore[arg-type]


def make_stage_fn(spec: dict, position: int):
    """The callable of stage ``position``: passes items on, and injects the fault at its item."""
    fault, stage, at = spec["fault"], spec["fault_stage"], spec["fault_item"]

    def fn(item):
        if position == stage and index_of(item) == at:
            if fault == "exception":
                raise ValueError(f"chaos: injected at item {at}")
            if fault in ("sigkill_worker", "retry_crash"):
                os.kill(os.getpid(), signal.SIGKILL)
            if fault == "os_exit":
                os._exit(0)
            if fault == "hang":
                while True:  # a pure-Python hang: the stage's timeout must end it
                    pass
            if fault == "sys_exit":
                sys.exit(3)
            if fault == "c_call":
                open(os.environ["CHAOS_FLAG"], "w").close()  # tell the consumer it started
                sum(range(10**12))  # a C loop that holds the GIL for minutes
        return item

    fn.__name__ = f"stage{position}"
    return fn


def keep(item) -> bool:
    return index_of(item) % 7 != 0


def source(spec: dict):
    n, size = spec["n"], spec["array_size"]
    for i in range(n):
        if spec["fault"] == "source_raises" and i == spec["fault_item"]:
            raise LookupError(f"chaos: the source failed at item {i}")
        yield np.full(size, i, dtype=np.float64) if size else i


def build(spec: dict):
    stream = hr.from_iterable(source(spec), name="source")
    for position, st in enumerate(spec["stages"]):
        options = {
            "workers": st["workers"],
            "backend": st["backend"],
            "ordered": st["ordered"],
            "on_error": st["on_error"],
            "retries": st["retries"],
            "name": f"stage{position}",
        }
        if st["timeout"] is not None:
            options["timeout"] = st["timeout"]
        if st["kind"] == "filter":
            stream = stream.filter(keep, **options)
        else:
            stream = stream.map(make_stage_fn(spec, position), **options)
    return stream


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def release_warm_workers() -> None:
    """End the idle process workers headrace keeps for the program's next run (by design),
    so that what is counted is what the run left, not the warm pool."""
    try:
        from headrace._backends._process import release_warm
    except ImportError:
        return
    release_warm()


def warm_up(spec: dict) -> None:
    """Start what lives for the whole program (the forkserver, the resource tracker) before
    the baseline is taken, so that only what the run itself leaves is counted."""
    if any(st["backend"] == "process" for st in spec["stages"]):
        hr.from_iterable([1]).map(abs, backend="process").collect(start_method=spec["start_method"])
    release_warm_workers()


def describe(exc: BaseException | None) -> dict | None:
    if exc is None:
        return None
    return {
        "type": type(exc).__name__,
        "message": str(exc)[:500],
        "notes": list(getattr(exc, "__notes__", [])),
        "cause": type(exc.__cause__).__name__ if exc.__cause__ is not None else None,
    }


def consume(spec: dict, run, out: list[int]) -> None:
    fault, after = spec["fault"], spec["consumer_after"]
    for item in run:
        out.append(index_of(item))
        if len(out) == after:
            if fault == "early_break":
                return
            if fault == "ctrl_c":
                os.killpg(os.getpgid(0), signal.SIGINT)  # Ctrl-C to the whole process group
                time.sleep(5)  # the KeyboardInterrupt arrives here
            if fault == "parent_sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            if fault == "group_sigkill":
                os.killpg(os.getpgid(0), signal.SIGKILL)


def kill_self_when_flagged() -> None:
    """The C-call fault: SIGKILL this interpreter once a worker is inside the C call."""
    flag = os.environ["CHAOS_FLAG"]
    deadline = time.monotonic() + 20
    while not os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    spec = json.loads(sys.argv[1])
    if spec["fault"] == "c_call":
        threading.Thread(target=kill_self_when_flagged, daemon=True).start()
    warm_up(spec)
    gc.collect()
    fds_before = open_fds()
    threads_before = set(threading.enumerate())
    print(f"PID {os.getpid()}", flush=True)
    out: list[int] = []
    error: BaseException | None = None
    run = None
    t0 = time.monotonic()
    try:
        run = build(spec).open(start_method=spec["start_method"])
        with run:
            consume(spec, run, out)
    except BaseException as exc:  # KeyboardInterrupt too: it is one of the faults
        error = exc
    elapsed = time.monotonic() - t0
    stages, errors = [], []
    if run is not None:
        report = run.report()
        keys = ("name", "items_in", "items_out", "completed", "dropped", "errors", "cancelled")
        stages = [{k: getattr(s, k) for k in keys} for s in report.stages]
        errors = [[e.stage, e.index, e.type] for e in report.errors]
    described = describe(error)
    del run, error  # the error's traceback holds the frames that held the run
    release_warm_workers()
    fds_no_gc = open_fds() - fds_before
    gc.collect()
    extra: list[threading.Thread] = []
    deadline = time.monotonic() + THREADS_GONE_S
    while time.monotonic() < deadline:
        extra = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
        if not extra:
            break
        time.sleep(0.02)
    result = {
        "out": out,
        "error": described,
        "elapsed": elapsed,
        "stages": stages,
        "errors": errors,
        "threads_left": [t.name for t in extra],
        "fds_left": open_fds() - fds_before,
        "fds_left_before_gc": fds_no_gc,
    }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
