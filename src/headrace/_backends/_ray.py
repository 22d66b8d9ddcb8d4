"""The Ray engine: a process stage's workers are Ray actors (``engine=RayEngine(...)``).

    driver thread (slot i)                             actor (slot i, a Ray worker process)
    ----------------------                             ------------------------------------
    next_chunk() -> chunk --- actor.run.remote() -->   Caller.run(chunk): the shared worker
    ray.wait(head, deadline)                             body (retries, rng, per-item errors)
    finish(Done) <----------- object store ---------   outputs per port, typed failures
    RayActorError: the actor died; its chunks go again on a fresh actor, the one it ran item
    by item (so that the item at fault is known: it is retried or fails as WorkerCrashedError)
    a timed item past its deadline: ray.kill, a StageTimeoutError, a fresh actor

One Ray call per chunk (the runner sizes chunks by time); a worker holds `DEPTH` chunks so it
never waits for the driver. Actors that end a run holding no call wait in `IDLE` for the next
run's stage (`StageActor.job`); the others are killed when the run closes. Arrays in items
and results travel through Ray's object store (numpy arrays read back zero-copy). Stream
stages (transform, ...) keep local processes.
Ray is imported only here, and only when a run uses the engine: ``import headrace`` never
imports it.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import logging
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._errors import SerializationError, WorkerCrashedError, format_traceback, shorten
from .._stages import STREAM_KINDS, StageOptions
from .._transport import Cancelled, StopStage
from ._base import (
    Backend,
    Caller,
    Chunk,
    Done,
    Failure,
    StageWork,
    Workers,
    dump_callable,
    dump_error,
    failed,
    instantiate,
    load_error,
    run_stream,
    set_item,
    timeout_error,
)

#: Chunks an actor may hold: one running, one queued behind it (it never waits for the driver).
DEPTH = 2
#: Seconds of work a chunk should take: enough to pay for an actor call (about a millisecond).
CHUNK_S = 0.02
#: Array bytes a Ray stage may hold in flight, beyond one item per worker.
WINDOW_BYTES = 64 * 2**20
#: How often (seconds) a driver thread waiting on an actor looks at the run's cancellation.
POLL_S = 0.05
#: A crash loop: this many different items killing actors within CRASH_WINDOW_S seconds.
CRASH_LOOP = 5
CRASH_WINDOW_S = 10.0
#: Seconds an actor left idle by a finished run is kept for the next run (starting one takes a
#: second or more); it then exits. One idle longer than IDLE_S - IDLE_MARGIN_S is not reused.
IDLE_S = 60.0
IDLE_MARGIN_S = 5.0
#: Idle actors kept at most (more are ended when given back).
MAX_IDLE = 4 * (os.cpu_count() or 1)
INSTALL_HINT = 'the Ray engine needs Ray: pip install "headrace[ray]"'
#: Input chunks a stream stage's actor holds beyond the one its function reads (it never waits
#: for the driver's next `put`).
INBOX = 2
#: Outputs of a stream stage an actor gathers into one answer at most, and the seconds it
#: keeps the first one waiting for more (as the process backend's workers do).
MAX_BATCH = 256
FLUSH_S = 0.005
#: Outputs a stream stage's actor holds before its function waits for the driver to take them.
MAX_HELD = 4 * MAX_BATCH
#: Seconds a `take` waits for outputs before it answers with none.
TAKE_S = 1.0
#: Log records an actor keeps for the driver between two answers (the oldest go beyond it).
MAX_LOGS = 10_000
#: The Ray resources a stage's actors may ask for (``RayEngine(actor_options=...)``), as
#: ``ActorClass.options(...)`` takes them.
ACTOR_OPTIONS = ("num_cpus", "num_gpus", "memory", "resources")


def import_ray() -> Any:
    """The ``ray`` module, or an ImportError of one line naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise ImportError(f"headrace: {INSTALL_HINT}") from None
    return ray


class RayEngine:
    """Runs a pipeline's process stages on Ray: each worker is a Ray actor.

    Pass it as ``engine=`` to `Stream.collect`, `Stream.run`, `Stream.open` or `run`. Nothing
    about the pipeline changes: a process stage's workers become actors (a class callable is
    instantiated once per actor), thread and inline stages run in this program as before, and
    order, backpressure, ``on_error`` / ``retries`` / ``timeout``, error records, the report
    and ``seed`` / `rng` draws are those of the local engine.

    Parameters
    ----------
    address : str or None
        The cluster to connect to: ``"auto"`` (a cluster started on this machine with
        ``ray start``), ``"ray://host:10001"`` (Ray Client), or None: the cluster named by
        ``RAY_ADDRESS``, else a local Ray started for this program.
    actor_options : dict or None
        Ray resources for the actors of named process stages, keyed by stage name (the
        stage's ``name=``): ``{"embed": {"num_gpus": 1}, "decode": {"num_cpus": 2,
        "memory": 2**30, "resources": {"ssd": 1}}}``. Each actor of the stage holds them
        for its life (Ray places it on a node that has them, and hands it those GPUs; an
        entry without ``num_cpus`` holds 1 CPU, by Ray's rule). Without an entry an actor
        asks for Ray's defaults (1 CPU to be placed, none held). The names must be process
        stages of each run the engine is given (a misspelt name is refused, not ignored):
        give pipelines with other stages an engine of their own.
        A stage that no node of the cluster can place fails when the run starts.
    **ray_init_kwargs
        Passed to ``ray.init`` (e.g. ``num_cpus=8``, ``runtime_env={...}``).

    Ray is connected at the first run that needs it. If Ray is already initialized in this
    program, that connection is used as it is. A Ray that the engine started is shut down by
    `shutdown` or when the program exits. Closing a run kills the actors that still hold a
    call; idle ones are kept (60 s) for the next run, which then needs no actor start;
    `shutdown` ends them. Needs ``pip install "headrace[ray]"``.

    Examples
    --------
    >>> import headrace as hr
    >>> engine = hr.RayEngine(num_cpus=2, include_dashboard=False)
    >>> engine
    RayEngine(address=None, num_cpus=2, include_dashboard=False)
    >>> hr.RayEngine(actor_options={"embed": {"num_gpus": 1}}).actor_options
    {'embed': {'num_gpus': 1}}
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        actor_options: Mapping[str, Mapping[str, Any]] | None = None,
        **ray_init_kwargs: Any,
    ) -> None:
        if address is not None and not isinstance(address, str):
            raise TypeError(f"address must be a string or None, got {address!r}")
        self.actor_options = check_actor_options(actor_options)
        try:
            found = importlib.util.find_spec("ray") is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise ImportError(f"headrace: {INSTALL_HINT}")
        self.address = address
        self.ray_init_kwargs = dict(ray_init_kwargs)
        self._started = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.ray_init_kwargs.items())
        if self.actor_options:
            extra += f", actor_options={self.actor_options!r}"
        return f"RayEngine(address={self.address!r}{extra})"

    def connect(self) -> Any:
        """Connect to Ray (or start a local one) unless this program already is; the module."""
        ray = import_ray()
        with self._lock:
            if not ray.is_initialized():
                ray.init(address=self.address, **self.ray_init_kwargs)
                self._started = True
                atexit.register(self.shutdown)
        return ray

    def shutdown(self) -> None:
        """End the actors kept idle for later runs, and shut down the Ray that this engine
        started (not one it connected to)."""
        release_idle()
        with self._lock:
            if not self._started:
                return
            self._started = False
        ray = import_ray()
        if ray.is_initialized():
            ray.shutdown()

    def backends(self, local: Mapping[str, Backend]) -> dict[str, Backend]:
        """The backends of a run on this engine: process stages on Ray actors."""
        backends = dict(local)
        backends["process"] = RayBackend(self, local["process"])
        return backends


class RayBackend(Backend):
    name = "process"
    chunk_s = CHUNK_S

    def __init__(self, engine: RayEngine, local: Backend) -> None:
        self.engine = engine
        self.local = local
        self._checked = False  # the run's stage names against ``actor_options``

    def start(self, work: StageWork) -> Workers:
        ray = self.engine.connect()
        if not self._checked:
            self._checked = True
            check_stage_names(self.engine.actor_options, work)
        options = self.engine.actor_options.get(work.name, {})
        if options:
            check_placeable(ray, work.name, options, work.options.workers)
        return RayWorkers(work, ray, options)

    def window(self, options: StageOptions) -> tuple[int, int | None]:
        if options.timeout is not None:
            return 2 * options.workers, WINDOW_BYTES
        return (DEPTH + 1) * options.workers, WINDOW_BYTES


# --- per-stage resources ---------------------------------------------------------------------

_OPTIONS_HINT = (
    'e.g. actor_options={"embed": {"num_gpus": 1, "resources": {"ssd": 1}}}; the keys are '
    + ", ".join(ACTOR_OPTIONS)
)


def check_actor_options(
    actor_options: Mapping[str, Mapping[str, Any]] | None,
) -> dict[str, dict[str, Any]]:
    """``actor_options`` checked (stage name -> Ray resources), as plain dicts."""
    if actor_options is None:
        return {}
    if not isinstance(actor_options, Mapping):
        raise TypeError(
            f"actor_options must map stage names to Ray resources ({_OPTIONS_HINT}), "
            f"got {actor_options!r}"
        )
    checked: dict[str, dict[str, Any]] = {}
    for stage, options in actor_options.items():
        where = f"actor_options[{stage!r}]"
        if not isinstance(stage, str):
            raise TypeError(f"actor_options: a stage name must be a string, got {stage!r}")
        if not isinstance(options, Mapping):
            raise TypeError(f"{where} must be a dict of Ray resources ({_OPTIONS_HINT})")
        for key, value in options.items():
            if key not in ACTOR_OPTIONS:
                raise ValueError(f"{where}: unknown key {key!r}; {_OPTIONS_HINT}")
            if key == "resources":
                if not isinstance(value, Mapping) or not all(
                    isinstance(k, str) and _amount(v) for k, v in value.items()
                ):
                    raise TypeError(
                        f"{where}['resources'] must map resource names to amounts >= 0, "
                        f'e.g. {{"ssd": 1}}; got {value!r}'
                    )
            elif not _amount(value):
                raise TypeError(f"{where}[{key!r}] must be a number >= 0, got {value!r}")
        checked[stage] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in options.items()}
    return checked


def _amount(value: Any) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and value >= 0
        and math.isfinite(value)
    )


def check_stage_names(actor_options: Mapping[str, Any], work: StageWork) -> None:
    """Every stage named in ``actor_options`` is a process stage of this run (a misspelt
    name would otherwise leave its stage on Ray's defaults, silently)."""
    execution = getattr(work, "execution", None)
    plan = getattr(execution, "plan", None)
    if not actor_options or plan is None:
        return
    stages = {plan.names[n] for n in plan.nodes if n.options.backend == "process"}
    unknown = sorted(set(actor_options) - stages)
    if unknown:
        raise ValueError(
            f"RayEngine(actor_options=...) names {', '.join(map(repr, unknown))}, which this "
            f"run has no process stage of; its process stages are "
            f"{', '.join(map(repr, sorted(stages))) or 'none'} (a stage's name is its name= "
            "option, or its function's name)"
        )


def ray_resources(options: Mapping[str, Any]) -> dict[str, float]:
    """The resources an actor made with ``options`` holds, by Ray's names."""
    wanted = {k: float(v) for k, v in options.get("resources", {}).items()}
    for key, name in (("num_cpus", "CPU"), ("num_gpus", "GPU"), ("memory", "memory")):
        if key in options:
            wanted[name] = float(options[key])
    return {k: v for k, v in wanted.items() if v > 0}


def check_placeable(ray: Any, stage: str, options: Mapping[str, Any], workers: int) -> None:
    """Fail at once when the cluster's nodes cannot hold the stage's actors, all at once: Ray
    would leave such an actor pending for ever (a run that never ends). An autoscaling cluster
    that would add such a node is refused too (see KNOWN_GAPS)."""
    wanted = ray_resources(options)
    if not wanted:
        return
    try:
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    except Exception:  # e.g. a Ray Client connection that cannot list nodes: Ray decides
        return
    fits = sum(
        min(int(node.get(name, 0.0) // amount) for name, amount in wanted.items()) for node in nodes
    )
    if fits < workers:
        have = [{k: v for k, v in node.items() if not k.startswith("node:")} for node in nodes]
        raise ValueError(
            f"stage {stage!r}: its {workers} actor(s) ask Ray for {wanted} each, and the "
            f"cluster's nodes can hold {fits} of them (its nodes have {have}); ask for less "
            "in RayEngine(actor_options=...), use fewer workers, or add nodes that have them"
        )


# --- the actor side ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """What an actor needs to run a stage (the `StageWork` fields the `Caller` reads)."""

    name: str
    kind: str
    fn: bytes
    options: StageOptions
    ports: int
    position: int
    seed: int
    log_level: int = logging.WARNING


class StageActor:
    """The body of one actor: it runs one stage at a time (`job`), then waits idle for the next
    run's, and exits after `IDLE_S` seconds without one.

    Every answer is a tuple whose last element is the `logging` records made in the actor
    since the last answer (as dicts, for the driver's handlers). `job` makes the stage's
    function (a class is instantiated once per actor; a stream stage's function starts in a
    thread of its own) and answers ("ready", pid) or ("setup", error, traceback). A call
    stage's `run` answers ("done", outputs per port, completed, dropped, failures, busy
    seconds) with each failure as (index, exception bytes, traceback text). A stream stage's
    input comes by `put`, its outputs go by `take`; a stream actor runs its calls on more than
    one thread (`put` and `take` wait)."""

    def __init__(self) -> None:
        self.caller: Caller | None = None
        self.stream: ActorStream | None = None
        self.setup: tuple[bytes, str] | None = None
        self.last = time.monotonic()
        self.busy = False
        self.logs = ActorLogs()
        threading.Thread(target=self._exit_when_idle, daemon=True).start()

    def _exit_when_idle(self) -> None:
        while True:
            time.sleep(1.0)
            if not self.busy and time.monotonic() - self.last > IDLE_S:
                os._exit(0)

    def job(self, spec: Spec) -> tuple[Any, ...]:
        self.last = time.monotonic()
        self.busy = True
        self.caller, self.stream, self.setup = None, None, None
        root = logging.getLogger()
        root.handlers[:] = [self.logs]  # the driver's handlers get them (and not Ray's log)
        root.setLevel(spec.log_level)
        try:
            import cloudpickle

            fn = cloudpickle.loads(spec.fn)
            if spec.kind in STREAM_KINDS:  # the function is made in its own thread
                self.stream = ActorStream(spec, fn)
            else:
                self.caller = Caller(spec, instantiate(fn))  # type: ignore[arg-type]
        except BaseException as exc:
            self.setup = (dump_error(exc), format_traceback(exc))
            return ("setup", *self.setup, self.logs.take())
        return ("ready", os.getpid(), self.logs.take())

    def end_job(self) -> None:
        """The run is over: drop the stage's function (and what it holds)."""
        if self.stream is not None:
            self.stream.stop()
        self.caller = self.stream = self.setup = None
        self.busy = False
        self.last = time.monotonic()

    def pid(self) -> int:
        return os.getpid()

    def run(self, seq: int, keys: Sequence[int], values: list[Any]) -> tuple[Any, ...]:
        self.last = time.monotonic()
        if self.caller is None:
            assert self.setup is not None
            return ("setup", *self.setup, self.logs.take())
        done = self.caller.run(Chunk(seq, keys, values))
        errors = [(f.key, dump_error(f.error), f.traceback) for f in done.errors]
        outputs = [(list(k), v) for k, v in done.outputs]
        self.last = time.monotonic()
        answer = ("done", outputs, done.completed, done.dropped, errors, done.busy_s)
        return (*answer, self.logs.take())

    def put(self, keys: Sequence[int] | None, values: list[Any] | None) -> tuple[Any, ...]:
        """A stream stage's next input chunk (None: its input has ended); answers whether its
        function has returned (it takes no more)."""
        self.last = time.monotonic()
        stream = self.stream
        finished = stream is None or stream.put(keys, values)
        return ("put", finished, self.logs.take())

    def take(self, wait_s: float) -> tuple[Any, ...]:
        """A stream stage's outputs so far, its failures, and whether it has finished."""
        self.last = time.monotonic()
        stream = self.stream
        if stream is None:
            return ("stream", [], [], True, self.logs.take())
        outputs, events, finished = stream.take(wait_s)
        return ("stream", outputs, events, finished, self.logs.take())


class ActorStream:
    """A stream stage (transform) inside an actor, as `run_stream` sees it (`StageWork`): its
    function runs in a thread of its own, reading the chunks `put` brings and gathering its
    outputs for `take`. Both sides wait on one condition: `put` while `INBOX` chunks wait to be
    read, the function while `MAX_HELD` outputs wait to be taken (backpressure both ways)."""

    start_method = None
    shm_budget = 0

    def __init__(self, spec: Spec, fn: Any) -> None:
        self.name = spec.name
        self.kind = spec.kind
        self.fn = fn
        self.options = spec.options
        self.ports = spec.ports
        self.position = spec.position
        self.seed = spec.seed
        self._cond = threading.Condition()
        self._inbox: deque[tuple[Sequence[int], list[Any]] | None] = deque()
        self._outputs: list[Any] = []
        self._first = 0.0  # when the oldest output waiting to be taken was made
        self._events: list[tuple[str, bytes, str]] = []
        self._finished = False
        self._stopped = False
        self._thread = threading.Thread(target=self._main, name="headrace-stream", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        with contextlib.suppress(Cancelled, StopStage):
            run_stream(self)  # type: ignore[arg-type]
        with self._cond:
            self._finished = True
            self._cond.notify_all()

    # the driver's side (`StageActor.put`, `take`, `end_job`)

    def put(self, keys: Sequence[int] | None, values: list[Any] | None) -> bool:
        with self._cond:
            while len(self._inbox) >= INBOX and not (self._finished or self._stopped):
                self._cond.wait()
            if not self._finished:
                self._inbox.append(None if keys is None or values is None else (keys, values))
                self._cond.notify_all()
            return self._finished

    def take(self, wait_s: float) -> tuple[list[Any], list[tuple[str, bytes, str]], bool]:
        deadline = time.monotonic() + wait_s
        with self._cond:
            while not (self._events or self._finished or len(self._outputs) >= MAX_BATCH):
                now = time.monotonic()
                if self._outputs and now - self._first >= FLUSH_S:
                    break
                wait = deadline - now
                if self._outputs:
                    wait = min(wait, self._first + FLUSH_S - now)
                if wait <= 0:
                    break
                self._cond.wait(wait)
            outputs, self._outputs = self._outputs, []
            events, self._events = self._events, []
            self._cond.notify_all()  # the function may go on emitting
            return outputs, events, self._finished

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    # the function's side (`run_stream`)

    def stream_inputs(self) -> Iterator[Any]:
        while True:
            with self._cond:
                while not self._inbox:
                    if self._stopped:
                        raise StopStage
                    self._cond.wait()
                got = self._inbox.popleft()
                self._cond.notify_all()
            if got is None:
                return
            keys, values = got
            for key, value in zip(keys, values, strict=True):
                set_item(self.seed, self.position, key)
                yield value

    def emit(self, value: Any) -> None:
        with self._cond:
            while len(self._outputs) >= MAX_HELD and not self._stopped:
                self._cond.wait()
            if self._stopped:
                raise StopStage
            if not self._outputs:
                self._first = time.monotonic()
            self._outputs.append(value)
            if len(self._outputs) >= MAX_BATCH:
                self._cond.notify_all()

    def flush(self) -> None:
        with self._cond:
            if self._outputs:
                self._first = 0.0  # `take` answers at once
                self._cond.notify_all()

    def stream_failed(self, error: BaseException, tb: str) -> None:
        self._event("failed", error, tb)

    def setup_failed(self, error: BaseException, tb: str, key: int | None = None) -> None:
        self._event("setup", error, tb)

    def _event(self, what: str, error: BaseException, tb: str) -> None:
        with self._cond:
            self._events.append((what, dump_error(error), tb))
            self._cond.notify_all()

    def forward(self) -> None:
        raise AssertionError("pass-through stages run in the driver")


class ActorLogs(logging.Handler):
    """Keeps an actor's `logging` records for the driver, which hands them to its own
    handlers (as a process worker's records are), with the stage's name."""

    def __init__(self) -> None:
        super().__init__()
        self._records: deque[dict[str, Any]] = deque(maxlen=MAX_LOGS)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = dict(record.__dict__)
            fields["msg"] = record.getMessage()
            fields["args"] = None
            if record.exc_info:
                fields["exc_text"] = logging.Formatter().formatException(record.exc_info)
            fields["exc_info"] = None
            simple = (str, int, float, bool, tuple)
            self._records.append(
                {k: v for k, v in fields.items() if v is None or isinstance(v, simple)}
            )
        except Exception:
            self.handleError(record)

    def take(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        with contextlib.suppress(IndexError):
            while True:
                records.append(self._records.popleft())
        return records


_actor_class: Any = None
#: Threads of a stream stage's actor: a `put` waiting for room, a `take` waiting for outputs,
#: and one for `job` / `end_job`. A call stage's actor runs one call at a time (in order).
STREAM_CONCURRENCY = 3


def _remote_actor(ray: Any) -> Any:
    global _actor_class
    if _actor_class is None:
        _actor_class = ray.remote(max_restarts=0, max_task_retries=0)(StageActor)
    return _actor_class


def actor_key(stream: bool, options: Mapping[str, Any]) -> tuple[Any, ...]:
    """What an actor was made with: only an idle actor made alike may take a stage."""
    items = tuple(sorted((k, v) for k, v in options.items() if k != "resources"))
    return (stream, items, tuple(sorted(options.get("resources", {}).items())))


def make_actor(ray: Any, key: tuple[Any, ...]) -> Any:
    stream, items, resources = key
    options: dict[str, Any] = dict(items)
    if resources:
        options["resources"] = dict(resources)
    if stream:
        options["max_concurrency"] = STREAM_CONCURRENCY
    cls = _remote_actor(ray)
    return (cls.options(**options) if options else cls).remote()


class IdleActors:
    """Actors that finished a run cleanly, kept for the next run (a Ray actor takes a second or
    more to start). Only an actor whose run ended normally comes back: one that crashed, ran
    late, or was stopped mid-call (an error, an early exit, Ctrl-C) is killed. An actor is
    handed only to a stage that makes its actors alike (`actor_key`); one that holds
    resources is ended when a stage needs a fresh actor (it may hold what that one needs)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._actors: list[tuple[Any, float, tuple[Any, ...]]] = []

    def __len__(self) -> int:
        return len(self._actors)

    def ids(self) -> set[str]:
        """The Ray ids of the idle actors."""
        with self._lock:
            return {actor._actor_id.hex() for actor, _, _ in self._actors}

    def take(self, ray: Any, key: tuple[Any, ...]) -> Any:
        now = time.monotonic()
        ended = []
        with self._lock:
            for entry in reversed(self._actors):
                actor, since, made = entry
                if made == key and now - since < IDLE_S - IDLE_MARGIN_S:
                    self._actors.remove(entry)
                    return actor
            for entry in list(self._actors):
                actor, since, made = entry
                if now - since >= IDLE_S - IDLE_MARGIN_S or made[1] or made[2]:
                    self._actors.remove(entry)
                    ended.append(actor)
        for actor in ended:
            _kill_actor(ray, actor)
        return make_actor(ray, key)

    def give(self, ray: Any, actor: Any, key: tuple[Any, ...]) -> None:
        with contextlib.suppress(Exception):
            actor.end_job.remote()
        with self._lock:
            if len(self._actors) < MAX_IDLE:
                self._actors.append((actor, time.monotonic(), key))
                return
        _kill_actor(ray, actor)

    def release(self) -> None:
        """Kill every idle actor (`RayEngine.shutdown`, and the tests between two tests)."""
        with self._lock:
            actors, self._actors = self._actors, []
        ray = sys.modules.get("ray")
        if ray is not None and actors and ray.is_initialized():
            for actor, _, _ in actors:
                _kill_actor(ray, actor)


def _kill_actor(ray: Any, actor: Any) -> None:
    with contextlib.suppress(Exception):
        ray.kill(actor, no_restart=True)


#: The idle actors of this program (one Ray connection per program).
IDLE = IdleActors()


def release_idle() -> None:
    """End the actors kept idle for later runs."""
    IDLE.release()


# --- the driver side --------------------------------------------------------------------------


class _Died(Exception):
    """The actor is gone (killed, out of memory, its node lost)."""


class _CallFailed(Exception):
    """A call failed around the user's code (e.g. an item the actor could not unpickle)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class RayWorkers(Workers):
    """The actors of one stage and the driver threads that feed them, one per actor."""

    def __init__(self, work: StageWork, ray: Any, options: Mapping[str, Any]) -> None:
        self.work = work
        self.ray = ray
        self.timed = work.options.timeout is not None
        self.stream = work.kind in STREAM_KINDS
        self._key = actor_key(self.stream, options)
        spec = Spec(
            work.name,
            work.kind,
            dump_callable(work.name, work.fn),
            work.options,
            work.ports,
            work.position,
            work.seed,
            logging.getLogger().getEffectiveLevel(),
        )
        self._spec = ray.put(spec)
        self._lock = threading.Lock()
        self._actors: dict[int, Any] = {}
        self._pids: dict[int, int] = {}  # slot -> its actor's process id (for log records)
        self._feeders: dict[int, threading.Thread] = {}  # a stream stage's, one per actor
        self._ready: dict[int, Any] = {}  # slot -> the answer to its actor's `job` call
        self._clean: set[int] = set()  # slots whose actor holds no call
        self._crash_times: deque[tuple[float, int]] = deque()
        self._crashes: dict[int, int] = {}  # item index -> times it killed its actor (or ran late)
        self.closing = False
        for slot in range(work.options.workers):
            self._new_actor(slot)
        work.on_cancel(self._cancelled)
        self._threads = [
            threading.Thread(
                target=self._drive,
                args=(slot,),
                name=f"headrace-{work.name}-ray-{slot}",
                daemon=True,
            )
            for slot in range(work.options.workers)
        ]
        for thread in self._threads:
            thread.start()

    # --- actors ---------------------------------------------------------------------------

    def _new_actor(self, slot: int, fresh: bool = False) -> None:
        """Give ``slot`` an actor (an idle one of an earlier run, unless ``fresh``) and start
        the stage's job on it; `_await_ready` waits for it."""
        actor = make_actor(self.ray, self._key) if fresh else IDLE.take(self.ray, self._key)
        with self._lock:
            self._actors[slot] = actor
            self._ready[slot] = actor.job.remote(self._spec)

    def _kill(self, slot: int) -> None:
        with self._lock:
            actor = self._actors.pop(slot, None)
        if actor is not None:
            _kill_actor(self.ray, actor)

    def _give_back(self, slot: int) -> None:
        with self._lock:
            actor = self._actors.pop(slot, None)
        if actor is not None:
            IDLE.give(self.ray, actor, self._key)

    def _kill_all(self) -> None:
        with self._lock:
            slots = list(self._actors)
        for slot in slots:
            self._kill(slot)

    def _cancelled(self) -> None:
        self.closing = True

    def stopped(self) -> bool:
        execution = getattr(self.work, "execution", None)
        return self.closing or bool(execution is not None and execution.state.cancelled)

    # --- one driver thread per actor ------------------------------------------------------

    def _drive(self, slot: int) -> None:
        try:
            if self.stream:
                self._stream(slot)
            else:
                self._calls(slot)
        except (Cancelled, StopStage):
            pass
        except BaseException as exc:  # e.g. a replacement actor that cannot be made
            if not self.stopped():
                with contextlib.suppress(Cancelled):
                    self.work.setup_failed(exc, format_traceback(exc), None)
        finally:
            if self.stream:
                self._end_stream(slot)
            elif slot in self._clean:  # its actor holds no call: it is kept for a later run
                self._give_back(slot)
            else:
                self._kill(slot)
            if not self.stream:
                self.work.worker_exited()

    def _calls(self, slot: int) -> None:
        work = self.work
        sent: deque[tuple[Chunk, Any]] = deque()  # chunks the actor holds, in the order sent
        again: deque[Chunk] = deque()  # chunks to send again: a dead actor's
        split: set[int] = set()  # seqs of chunks to run item by item
        ended = False
        self._clean.add(slot)  # an actor still starting holds no call: it may be kept
        self._await_ready(slot)  # its start-up must not count against an item's timeout
        self._clean.discard(slot)
        while True:
            if self.stopped():
                if not sent:  # its actor holds no call (e.g. it was ready as the run ended)
                    self._clean.add(slot)
                return
            depth = 1 if self.timed else DEPTH
            while len(sent) < depth:
                chunk: Chunk | bool | None
                if again:
                    if again[0].seq in split:
                        if sent:
                            break
                        chunk = again.popleft()
                        split.discard(chunk.seq)
                        work.finish(self._item_by_item(slot, chunk))
                        continue
                    chunk = again.popleft()
                elif ended:
                    break
                else:
                    if not sent:  # the actor holds nothing: it may be kept if the run ends now
                        self._clean.add(slot)
                    chunk = work.next_chunk(block=not sent)
                    self._clean.discard(slot)
                    if chunk is None:
                        ended = True
                        break
                    if chunk is False:
                        break
                assert isinstance(chunk, Chunk)
                try:
                    ref = self._actors[slot].run.remote(chunk.seq, chunk.keys, chunk.values)
                except Exception:  # an item cannot be sent: find it, item by item
                    split.add(chunk.seq)
                    again.appendleft(chunk)
                    continue
                sent.append((chunk, ref))
            if not sent:
                if ended and not again:
                    self._clean.add(slot)
                    return
                continue
            chunk, ref = sent[0]
            deadline = self._deadline()
            try:
                result = self._wait(ref, deadline, slot)
            except (_Died, _CallFailed) as exc:
                # The actor ran the first chunk it holds when it died: that one goes again item
                # by item (to find the item at fault), the others whole.
                chunks = [c for c, _ in sent]
                sent.clear()
                split.add(chunks[0].seq)
                again.extendleft(reversed(chunks))
                if isinstance(exc, _Died):
                    self._kill(slot)
                    self._new_actor(slot)
                    self._await_ready(slot)
                continue
            if result is None:  # a timed item ran late: settled like a crash
                sent.popleft()
                self._kill(slot)
                self._new_actor(slot)
                failure = self._settle(chunk, 0, late=True)
                if failure is None:
                    again.appendleft(chunk)
                else:
                    work.finish(failed(chunk, failure, work.ports))
                self._await_ready(slot)
                continue
            sent.popleft()
            work.finish(self._done(chunk, result))

    # --- a stream stage: a feeder thread puts, the driver thread takes -------------------

    def _stream(self, slot: int) -> None:
        """Run a stream stage's function on the slot's actor: its own sub-stream goes in by
        `StageActor.put` (a feeder thread), its outputs come back by `StageActor.take`. The
        actor's death fails the run, also under on_error='skip' (its function's state is
        gone), as a worker process's does."""
        work = self.work
        self._clean.add(slot)  # an actor still starting holds no call: it may be kept
        self._await_ready(slot)
        self._clean.discard(slot)
        actor = self._actors[slot]
        feeder = threading.Thread(
            target=self._feed,
            args=(slot, actor),
            name=f"headrace-{work.name}-ray-{slot}-feed",
            daemon=True,
        )
        with self._lock:
            self._feeders[slot] = feeder
        feeder.start()
        while True:
            try:
                answer = self._wait(actor.take.remote(TAKE_S), None, slot)
            except _Died as exc:
                if self.stopped():
                    raise Cancelled from None
                what = (
                    f"stage {work.name!r}: its Ray actor (process {self._pids.get(slot)}) died "
                    f"while running the stage's function ({shorten(str(exc), 300)})"
                )
                crash = WorkerCrashedError(what, stage=work.name, worker="ray actor")
                work.setup_failed(crash, "", None)
                raise Cancelled from None
            except _CallFailed as exc:  # its outputs could not come back
                error = _transit(work.name, "an output could not be sent back", exc.cause)
                work.stream_failed(error, format_traceback(exc.cause))
                continue
            assert answer is not None
            _, outputs, events, finished = answer
            for value in outputs:
                work.emit(value)
            work.flush()
            for what, data, tb in events:
                if what == "setup":
                    work.setup_failed(load_error(data), tb, None)
                    raise Cancelled
                work.stream_failed(load_error(data), tb)
            if finished:
                self._clean.add(slot)
                return

    def _feed(self, slot: int, actor: Any) -> None:
        """The slot's share of the stage's input, chunk by chunk, to its actor (one `put` at a
        time: the actor holds `INBOX` chunks, so that its function never waits for the next)."""
        work = self.work
        try:
            for keys, values in work.stream_chunks():
                try:
                    answer = self._wait(actor.put.remote(keys, values), None, slot)
                except (_CallFailed, TypeError, ValueError) as exc:  # an item cannot travel
                    cause = exc.cause if isinstance(exc, _CallFailed) else exc
                    error = _transit(work.name, "an item could not be sent to its actor", cause)
                    work.stream_failed(error, format_traceback(cause))
                    continue
                if answer is not None and answer[1]:
                    return  # the function has returned: it takes no more input
            self._wait(actor.put.remote(None, None), None, slot)
        except (Cancelled, StopStage, _Died, _CallFailed):
            pass

    def _end_stream(self, slot: int) -> None:
        """The slot's function has returned (its actor is clean), or the run ends: the actor
        is kept for a later run once its feeder has stopped, else killed."""
        clean = slot in self._clean
        if not clean:
            self._kill(slot)  # its feeder's `put` fails and it stops
        self.work.worker_exited()  # the stage's last one: its input stops
        with self._lock:
            feeder = self._feeders.get(slot)
        if feeder is not None and clean:
            feeder.join(POLL_S)
        if clean and (feeder is None or not feeder.is_alive()):
            self._give_back(slot)
        else:
            self._kill(slot)

    def _deadline(self) -> float | None:
        timeout = self.work.options.timeout
        return None if timeout is None else time.monotonic() + timeout

    def _await_ready(self, slot: int) -> None:
        """Wait for the slot's actor to have made the stage's function; an idle actor that
        has gone meanwhile is replaced by a fresh one."""
        for attempt in range(2):
            try:
                result = self._wait(self._ready[slot], None, slot)
            except _Died:
                self._kill(slot)
                if attempt:
                    raise
                self._new_actor(slot, fresh=True)
                continue
            assert result is not None
            self._check_setup(result)
            self._pids[slot] = result[1]
            return

    def _wait(self, ref: Any, deadline: float | None, slot: int) -> tuple[Any, ...] | None:
        """The answer of ``slot``'s actor (its log records handed to this program's
        handlers); None when ``deadline`` passes first; _Died when it is gone."""
        ray = self.ray
        while True:
            if self.stopped():
                raise Cancelled
            wait = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
            if wait <= 0:
                return None
            ready, _ = ray.wait([ref], timeout=wait)
            if ready:
                break
        try:
            result: tuple[Any, ...] = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # the call failed around the user's code
            cause = getattr(exc, "cause", None)
            raise _CallFailed(cause if isinstance(cause, BaseException) else exc) from exc
        except ray.exceptions.RayError as exc:  # RayActorError, OutOfMemoryError, ...
            raise _Died(str(exc)) from exc
        *answer, records = result
        if records:
            self._log(slot, records)
        return tuple(answer)

    def _log(self, slot: int, records: list[dict[str, Any]]) -> None:
        """An actor's log records, handled here as the process backend handles a worker's."""
        for fields in records:
            record = logging.makeLogRecord(fields)
            record.processName = f"{self.work.name}/worker-{slot}"
            record.headrace_stage = self.work.name
            record.headrace_worker = self._pids.get(slot)
            logger = logging.getLogger(record.name)
            if logger.isEnabledFor(record.levelno):
                logger.handle(record)

    def _check_setup(self, result: tuple[Any, ...]) -> None:
        if result[0] == "setup":
            self.work.setup_failed(load_error(result[1]), result[2], None)
            raise Cancelled

    def _done(self, chunk: Chunk, result: tuple[Any, ...]) -> Done:
        self._check_setup(result)
        _, outputs, completed, dropped, errors, busy = result
        failures = [Failure(key, load_error(data), tb) for key, data, tb in errors]
        return Done(chunk, [(k, v) for k, v in outputs], completed, dropped, failures, busy)

    def _item_by_item(self, slot: int, chunk: Chunk) -> Done:
        """Run a chunk one item per call (its actor died on it, or an item could not travel):
        an item that kills its actor again is retried (within ``retries``) or fails with
        WorkerCrashedError, one that runs late fails with StageTimeoutError; the others run."""
        ports = self.work.ports
        outputs: list[tuple[list[int], list[Any]]] = [([], []) for _ in range(ports)]
        total = Done(chunk, outputs, 0)  # type: ignore[arg-type]
        for index in range(len(chunk.values)):
            part = Chunk(chunk.seq, chunk.keys[index : index + 1], chunk.values[index : index + 1])
            key = part.keys[0]
            while True:
                try:
                    ref = self._actors[slot].run.remote(part.seq, part.keys, part.values)
                    result = self._wait(ref, self._deadline(), slot)
                except _CallFailed as exc:
                    total.errors.append(Failure(key, exc.cause, format_traceback(exc.cause)))
                    break
                except (_Died, Exception) as exc:
                    if isinstance(exc, Cancelled | StopStage):
                        raise
                    if not isinstance(exc, _Died):  # it could not be sent
                        total.errors.append(Failure(key, exc, format_traceback(exc)))
                        break
                    result = None
                    late = False
                else:
                    late = result is None
                if result is None:
                    self._kill(slot)
                    self._new_actor(slot)
                    failure = self._settle(part, 0, late=late)
                    self._await_ready(slot)
                    if failure is None:
                        continue  # its retries allow another try, on the fresh actor
                    total.errors.append(failure)
                    break
                done = self._done(part, result)
                for port, (keys, values) in enumerate(done.outputs):
                    outputs[port][0].extend(keys)
                    outputs[port][1].extend(values)
                total.completed += done.completed
                total.dropped += done.dropped
                total.errors.extend(done.errors)
                total.busy_s += done.busy_s
                break
            if total.errors and self.work.options.on_error != "skip":
                break  # the chunk's first failure ends the run: the rest need not run
        return total

    def _settle(self, chunk: Chunk, index: int, late: bool) -> Failure | None:
        """Item ``index`` of ``chunk`` killed its actor (or ran late): None when it may go
        again (its ``retries`` allow), else its failure. Many different items doing so within
        `CRASH_WINDOW_S` is a crash loop: the run ends."""
        work = self.work
        key = chunk.keys[index]
        now = time.monotonic()
        if late:
            assert work.options.timeout is not None
            error: BaseException = timeout_error(work.name, key, work.options.timeout)
        else:
            self._crash_times.append((now, key))
            while self._crash_times and self._crash_times[0][0] < now - CRASH_WINDOW_S:
                self._crash_times.popleft()
            what = f"stage {work.name!r}: a Ray actor died while running item {key}"
            error = WorkerCrashedError(what, stage=work.name, worker="ray actor", index=key)
            distinct = {k for _, k in self._crash_times}
            if len(distinct) >= CRASH_LOOP:
                loop = (
                    f"{what}: actors died on {len(distinct)} different items within "
                    f"{CRASH_WINDOW_S:g} s; stopping (crash loop)"
                )
                crash = WorkerCrashedError(loop, stage=work.name, worker="ray actor", index=key)
                work.setup_failed(crash, "", key)
                raise Cancelled
        tries = self._crashes[key] = self._crashes.get(key, 0) + 1
        if tries <= work.options.retries:
            return None
        return Failure(key, error, "")

    # --- the end --------------------------------------------------------------------------

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        try:
            for thread in self._threads:
                if thread is not threading.current_thread():
                    thread.join(max(0.0, deadline - time.monotonic()))
        finally:
            self.closing = True
            self._kill_all()  # a thread still in a call (or a Ctrl-C here): its actor goes now
        with self._lock:
            threads = self._threads + list(self._feeders.values())
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, min(POLL_S * 4, deadline - time.monotonic())))
        return not any(t.is_alive() for t in threads if t is not threading.current_thread())


def _transit(stage: str, what: str, cause: BaseException) -> SerializationError:
    """An item or output of ``stage`` that could not cross to or from its actor."""
    error = SerializationError(
        f"stage {stage!r}: {what}: {type(cause).__name__}: {shorten(str(cause), 300)}; values "
        "that cross to Ray actors must pickle (not locks, open files, sockets or generators)",
        stage=stage,
    )
    error.__cause__ = cause
    return error
