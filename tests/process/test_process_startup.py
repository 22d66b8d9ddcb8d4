"""What the forkserver imports for the workers, once: the program's main module (as
``__mp_main__``, as a worker would), the module of the first process stage's function, and the
worker program without the parent side. Each case runs a user's script in its own interpreter
(the forkserver is per program)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from headrace._backends._process import _launch

TIMEOUT_S = 90

HELPER = textwrap.dedent(
    """
    import os

    with open(os.environ["MARKS"], "a") as marks:
        marks.write(f"helper {os.getpid()}\\n")

    def inc(x):
        return x + 1
    """
)

SCRIPT = textwrap.dedent(
    """
    import json
    import os
    import sys

    import headrace as hr
    from helper import inc

    with open(os.environ["MARKS"], "a") as marks:
        marks.write(f"main {os.getpid()} {__name__} {json.dumps(sys.argv)}\\n")
    print("imported")

    TOP = 41  # a top-level name, as a worker sees it

    def describe(x):
        main = sys.modules["__main__"]
        loaded = sorted(m for m in sys.modules if m.startswith("headrace."))
        return [os.getpid(), main.__name__, main.TOP, inc(x), loaded]

    if __name__ == "__main__":
        rows = hr.from_iterable(range(40)).map(describe, workers=3, backend="process").collect()
        print("RESULT " + json.dumps(rows))
    """
)


def run(
    tmp_path: Path, script: str, *args: str, unset: tuple[str, ...] = (), **extra_env: str
) -> tuple[subprocess.CompletedProcess[str], str]:
    (tmp_path / "helper.py").write_text(HELPER, encoding="utf-8")
    (tmp_path / "userscript.py").write_text(script, encoding="utf-8")
    marks = tmp_path / "marks.txt"
    # Block-buffered output (as a script's, into a pipe): what the server does not flush is
    # lost, or shows again from each worker.
    drop = ("HEADRACE_START_METHOD", "PYTHONUNBUFFERED", *unset)
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["MARKS"] = str(marks)
    env.update(extra_env)
    done = subprocess.run(
        [sys.executable, str(tmp_path / "userscript.py"), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
        env=env,
    )
    return done, marks.read_text(encoding="utf-8") if marks.exists() else ""


@pytest.mark.skipif(sys.platform != "linux", reason="forkserver workers: Linux")
def test_the_forkserver_imports_the_main_module_and_the_functions_module_once(
    tmp_path: Path,
) -> None:
    done, marks = run(tmp_path, SCRIPT, "an-argument")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout.split("RESULT ", 1)[1])
    workers = {row[0] for row in rows}
    lines = marks.splitlines()
    # The program itself and the forkserver import each module; no worker does.
    mains = [line.split(" ", 3) for line in lines if line.startswith("main ")]
    helpers = [line.split(" ") for line in lines if line.startswith("helper ")]
    assert len(mains) == 2 and len(helpers) == 2, marks
    parent = {int(pid) for _, pid, name, _ in mains if name == "__main__"}
    server = {int(pid) for _, pid, name, _ in mains if name == "__mp_main__"}
    assert len(parent) == 1 and len(server) == 1, marks
    assert not workers & (parent | server)
    assert {int(pid) for _, pid in helpers} == parent | server
    # ... with the program's sys.argv, as a worker's import of it has.
    argv = [json.loads(argv) for _, _, _, argv in mains]
    assert argv[0] == argv[1] and argv[0][1:] == ["an-argument"], argv
    # Workers see the main module as a worker of multiprocessing does.
    assert {(row[1], row[2]) for row in rows} == {("__mp_main__", 41)}
    assert sorted(row[3] for row in rows) == list(range(1, 41))
    # What the module printed as it was imported shows once per import: the forkserver flushes
    # it before it forks (else it is lost with the server, or repeated by each worker).
    assert done.stdout.count("imported") == 2, done.stdout


@pytest.mark.skipif(sys.platform != "linux", reason="forkserver workers: Linux")
def test_a_worker_does_not_load_the_parent_side(tmp_path: Path) -> None:
    done, _ = run(tmp_path, SCRIPT)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout.split("RESULT ", 1)[1])
    loaded = set(rows[0][4])
    assert "headrace._backends._process._worker" in loaded
    parent_side = {
        "headrace._backends._process._supervisor",
        "headrace._backends._process._warm",
        "headrace._backends._process._start",
        "headrace._runner",
        "headrace._run",
        "headrace._tempdirs",
    }
    assert not loaded & parent_side, sorted(loaded & parent_side)


def test_the_worker_program_leaves_out_the_costly_imports() -> None:
    """What the forkserver imports before it can fork the first worker is most of the time to
    a first pipeline's first result: the worker program goes without cloudpickle (imported
    when a function crosses by value, see above) and dataclasses (with inspect, ast, dis), and
    the server reads what the program tells it without ast."""
    code = (
        "import sys, multiprocessing.forkserver\n"
        "import headrace._backends._process._forkserver, headrace._backends._process._worker\n"
        "print(sorted({'ast', 'cloudpickle', 'dataclasses', 'inspect'} & set(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


NOT_IMPORTABLE = textwrap.dedent(
    """
    import headrace as hr

    if __name__ != "__main__":
        raise RuntimeError("this script cannot be imported")

    if __name__ == "__main__":
        hr.from_iterable(range(5)).map(abs, backend="process").collect()
    """
)


def test_a_main_module_the_forkserver_cannot_import_fails_the_run_once(tmp_path: Path) -> None:
    """The forkserver gives the import up; each worker then fails to import the script, and
    the run fails (no crash loop, no hang), as with spawn."""
    done, _ = run(tmp_path, NOT_IMPORTABLE)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "worker processes in a row died before they could start" in done.stderr
    assert "this script cannot be imported" in done.stderr  # the workers' own output


SPAWN_ORDER = textwrap.dedent(
    """
    import json
    import sys
    from multiprocessing import util

    import headrace as hr

    seen = {}
    spawn = util.spawnv_passfds
    COSTLY = ("ast", "dataclasses", "inspect")  # a few ms each, before the server could start
    assert not set(COSTLY) & set(sys.modules), "the test's own imports load them"

    def spy(path, args, passfds):
        if "forkserver" in args[-1]:
            seen["at_spawn"] = sorted(
                m for m in sys.modules if m.startswith("headrace") or m in COSTLY
            )
        return spawn(path, args, passfds)

    util.spawnv_passfds = spy

    if __name__ == "__main__":
        stream = hr.from_iterable(range(10)).map(abs, workers=2, backend="process")
        assert "at_spawn" in seen, "building a process stage starts the forkserver"
        assert stream.collect() == list(range(10))
        print("RESULT " + json.dumps(seen["at_spawn"]))
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="forkserver workers: Linux")
def test_a_process_stage_starts_the_forkserver_before_loading_the_runner(tmp_path: Path) -> None:
    """The forkserver boots (most of the time to the first result) while the program loads the
    runner and the backends: building the first process stage spawns it first, and what
    building needs imports no costly module of the standard library."""
    done, _ = run(tmp_path, SPAWN_ORDER)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = set(json.loads(done.stdout.split("RESULT ", 1)[1]))
    assert "headrace._backends._process._start" in loaded
    later = {
        "headrace._backends._base",
        "headrace._backends._process._protocol",
        "headrace._backends._process._supervisor",
        "headrace._backends._process._worker",
        "headrace._monitor",
        "headrace._run",
        "headrace._runner",
        "headrace._shm",
        "ast",
        "dataclasses",
        "inspect",
    }
    assert not loaded & later, sorted(loaded & later)


BY_VALUE = textwrap.dedent(
    """
    import sys

    import headrace as hr
    from helper import inc

    def local(x):
        return x + 1

    if __name__ == "__main__":
        fn = local if sys.argv[1] == "main" else inc
        assert hr.from_iterable(range(30)).map(fn, workers=3, backend="process").collect() == [
            x + 1 for x in range(30)
        ]
        print("RESULT ok")
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="forkserver workers: Linux")
@pytest.mark.parametrize(("where", "imports"), [("main", 2), ("helper", 0)])
def test_cloudpickle_is_imported_by_the_server_only_for_a_function_sent_by_value(
    tmp_path: Path, where: str, imports: int
) -> None:
    """cloudpickle's imports are a good part of a worker's start-up, and plain pickle sends and
    loads a function by reference (one of an importable module): cloudpickle is imported only
    for one sent by value (here, of the main script), once by the program and once by the
    server, none in the three workers."""
    done, _ = run(tmp_path, BY_VALUE, where, PYTHONPROFILEIMPORTTIME="1")
    assert done.returncode == 0 and "RESULT ok" in done.stdout, done.stderr[-3000:]
    # -X importtime prints a line per module imported; the package's own may come nested.
    assert done.stderr.count(" cloudpickle.cloudpickle\n") == imports, done.stderr[-3000:]


DUMPS = textwrap.dedent(
    """
    import pickle
    import sys

    import helper
    from headrace._backends._base import dump_callable

    def plain(fn):
        return pickle.dumps(fn, protocol=5)

    for fn in (helper.inc, abs, dict):  # by reference: plain pickle, no cloudpickle
        assert dump_callable("stage", fn) == plain(fn), fn
    assert "cloudpickle" not in sys.modules
    assert pickle.loads(dump_callable("stage", lambda x: x + 1))(1) == 2  # by value
    assert "cloudpickle" in sys.modules

    import cloudpickle

    cloudpickle.register_pickle_by_value(helper)  # the program's choice: by value from now
    assert dump_callable("stage", helper.inc) != plain(helper.inc)
    print("RESULT ok")
    """
)


def test_a_function_sent_by_reference_is_pickled_without_cloudpickle(tmp_path: Path) -> None:
    """A function, builtin or class that its module holds under its name goes by plain pickle
    (the same bytes cloudpickle would write; the program need not import cloudpickle, a fifth
    of a first process run's set-up); a lambda by cloudpickle; and once cloudpickle is loaded,
    everything goes through it, so that a module registered to go by value does."""
    done, _ = run(tmp_path, DUMPS)
    assert done.returncode == 0 and "RESULT ok" in done.stdout, done.stderr[-3000:]


TRACKER = textwrap.dedent(
    """
    import json
    import os
    import sys
    from multiprocessing import forkserver, resource_tracker, util

    import headrace as hr

    spawned = []  # which of the two helpers each spawn started, in order
    real_spawn = util.spawnv_passfds

    def spy(path, args, passfds):
        spawned.append("server" if "forkserver" in args[-1] else "tracker")
        return real_spawn(path, args, passfds)

    util.spawnv_passfds = spy

    if __name__ == "__main__":
        if sys.argv[1] == "own":
            resource_tracker.ensure_running()  # the program's own tracker: left alone
        stream = hr.from_iterable(range(10)).map(abs, workers=2, backend="process")
        pid = resource_tracker._resource_tracker._pid
        nice = os.getpriority(os.PRIO_PROCESS, pid)
        assert stream.collect() == list(range(10))
        assert forkserver.resource_tracker is resource_tracker  # put back
        print("RESULT " + json.dumps([nice, os.getpriority(os.PRIO_PROCESS, 0), spawned]))
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="forkserver workers: Linux")
def test_the_resource_tracker_the_forkserver_starts_yields_to_it(tmp_path: Path) -> None:
    """The tracker that starting the forkserver starts is spawned after the server, not before
    it, and gets a lower priority (its imports would compete with the server's); the program's
    own, and the program, keep theirs."""
    from headrace._backends._process._start import TRACKER_NICE

    niceness = {}
    for case in ("started", "own"):
        done, _ = run(tmp_path, TRACKER, case)
        assert done.returncode == 0, done.stderr[-3000:]
        niceness[case] = json.loads(done.stdout.split("RESULT ", 1)[1])
    tracker, program, spawned = niceness["started"]
    assert tracker == max(TRACKER_NICE, program) and program == os.getpriority(os.PRIO_PROCESS, 0)
    assert spawned == ["server", "tracker"]
    tracker, program, spawned = niceness["own"]
    assert spawned == ["tracker", "server"]
    assert tracker == program == os.getpriority(os.PRIO_PROCESS, 0)


EARLY = textwrap.dedent(
    """
    import json
    import os
    import sys

    if sys.argv[1] == "loaded":
        import multiprocessing  # the program's own: the usual start

    import headrace as hr

    seen = []
    real_spawn = os.posix_spawn

    def spy(path, args, env, **kwargs):
        seen.append(["multiprocessing" in sys.modules, args])
        return real_spawn(path, args, env, **kwargs)

    os.posix_spawn = spy

    if __name__ == "__main__":
        # A pipe end the program holds (inheritable): the server must not keep it open.
        read, write = os.pipe()
        os.set_inheritable(write, True)
        stream = hr.from_iterable(range(20)).map(abs, workers=2, backend="process")
        assert stream.collect() == list(range(20))
        import multiprocessing
        import subprocess
        from multiprocessing import forkserver

        server = forkserver._forkserver
        fds = os.listdir(f"/proc/{server._forkserver_pid}/fd")
        held = [os.readlink(f"/proc/{server._forkserver_pid}/fd/{fd}") for fd in fds]
        with open(f"/proc/{server._forkserver_pid}/cmdline") as cmdline:
            command = cmdline.read().split("\\0")[:-1]
        print("RESULT " + json.dumps({
            "seen": seen,
            "self": os.getpid(),
            "command": command,
            "flags": subprocess._args_from_interpreter_flags(),
            "pipe_held": os.readlink(f"/proc/self/fd/{write}") in held,
            "address": server._forkserver_address,
            "tempdir": multiprocessing.current_process()._config["tempdir"],
        }))
    """
)


@pytest.mark.skipif(
    sys.platform != "linux" or sys.version_info[:2] not in _launch.VERSIONS,
    reason="the early spawn's scope",
)
@pytest.mark.parametrize("case", ["flags", "no-flags", "loaded"])
def test_the_forkserver_is_spawned_before_multiprocessing_is_imported(
    tmp_path: Path, case: str
) -> None:
    """The first process stage spawns the forkserver before the program imports
    multiprocessing (about 20 ms sooner), with multiprocessing's own command, interpreter
    flags and private socket, and without the program's other inheritable descriptors; a
    program that imported multiprocessing itself gets multiprocessing's usual start."""
    temp = Path(tempfile.mkdtemp(prefix="hr-"))  # short: the socket's path has a limit
    env = {"TMPDIR": str(temp)}
    if case == "flags":
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # -B, which the server must get too
    unset = () if case == "flags" else ("PYTHONDONTWRITEBYTECODE",)
    try:
        done, _ = run(tmp_path, EARLY, case, unset=unset, **env)
        left = list(temp.iterdir())
    finally:
        shutil.rmtree(temp)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.split("RESULT ", 1)[1])
    spawned = [args for loaded, args in got["seen"] if "forkserver" in args[-1]]
    if case == "loaded":
        assert spawned == []  # multiprocessing's util.spawnv_passfds, not posix_spawn
    else:
        assert [loaded for loaded, _ in got["seen"]][:1] == [False]
        assert spawned == [got["command"]]
    command = got["command"]
    assert command[:-2] == [sys.executable, *got["flags"]] and command[-2] == "-c"
    assert ("-B" in command) == (case == "flags")
    assert command[-1].startswith("from multiprocessing.forkserver import main; main(")
    assert not got["pipe_held"]
    # The socket in multiprocessing's temp folder, in a folder of headrace's in $TMPDIR;
    # both gone once the program has exited.
    owner = Path(got["tempdir"]).parent
    assert Path(got["address"]).parent == Path(got["tempdir"])
    assert owner.parent == temp and owner.name.startswith(f"headrace-{got['self']}-mp-")
    assert left == []


ADOPT = textwrap.dedent(
    """
    import json
    import os

    from headrace._backends._process import _launch, _start

    if __name__ == "__main__":
        spawned = _launch.spawn(list(_start.PRELOAD))
        from multiprocessing import forkserver

        forkserver.ensure_running()  # as another thread might, meanwhile
        theirs = forkserver._forkserver._forkserver_pid
        adopted = _launch.adopt(spawned)
        try:
            os.waitpid(spawned.pid, os.WNOHANG)
            reaped = False
        except ChildProcessError:  # reaped already
            reaped = True
        print("RESULT " + json.dumps([
            adopted, forkserver._forkserver._forkserver_pid == theirs != spawned.pid,
            reaped, os.path.exists(spawned.owner),
        ]))
    """
)


@pytest.mark.skipif(
    sys.platform != "linux" or sys.version_info[:2] not in _launch.VERSIONS,
    reason="the early spawn's scope",
)
def test_a_server_spawned_early_gives_way_to_one_started_meanwhile(tmp_path: Path) -> None:
    """Handed to multiprocessing after another start (another thread's) won: it is stopped
    and reaped, its folder removed, and multiprocessing keeps the other one."""
    done, _ = run(tmp_path, ADOPT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.split("RESULT ", 1)[1]) == [False, True, True, False]


def _local() -> None:
    pass


def test_sent_by_value_tells_what_cloudpickle_sends_by_value() -> None:
    import functools
    import os.path

    from headrace._backends._process._start import sent_by_value

    assert not sent_by_value(abs)
    assert not sent_by_value(os.path.join)
    assert not sent_by_value(_local)  # a function of an importable module: by reference
    assert sent_by_value(lambda x: x)
    assert sent_by_value(functools.partial(abs))  # erring towards by value
    _local.__qualname__ = "renamed"  # not found where its name says: by value
    try:
        assert sent_by_value(_local)
    finally:
        _local.__qualname__ = "_local"
