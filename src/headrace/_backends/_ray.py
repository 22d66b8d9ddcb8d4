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
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._errors import WorkerCrashedError, format_traceback
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
    """

    def __init__(self, address: str | None = None, **ray_init_kwargs: Any) -> None:
        if address is not None and not isinstance(address, str):
            raise TypeError(f"address must be a string or None, got {address!r}")
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
        self.local = local  # stream stages keep local processes

    def start(self, work: StageWork) -> Workers:
        if work.kind in STREAM_KINDS:
            return self.local.start(work)
        return RayWorkers(work, self.engine.connect())

    def window(self, options: StageOptions) -> tuple[int, int | None]:
        if options.timeout is not None:
            return 2 * options.workers, WINDOW_BYTES
        return (DEPTH + 1) * options.workers, WINDOW_BYTES


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


class StageActor:
    """The body of one actor: it runs one stage at a time (`job`), then waits idle for the next
    run's, and exits after `IDLE_S` seconds without one.

    `job` makes the stage's function (a class is instantiated once per actor) and returns
    ("ready", pid) or ("setup", error, traceback). `run` returns ("done", outputs per port,
    completed, dropped, failures, busy seconds) with each failure as (index, exception bytes,
    traceback text)."""

    def __init__(self) -> None:
        self.caller: Caller | None = None
        self.setup: tuple[bytes, str] | None = None
        self.last = time.monotonic()
        self.busy = False
        threading.Thread(target=self._exit_when_idle, daemon=True).start()

    def _exit_when_idle(self) -> None:
        while True:
            time.sleep(1.0)
            if not self.busy and time.monotonic() - self.last > IDLE_S:
                os._exit(0)

    def job(self, spec: Spec) -> tuple[Any, ...]:
        self.last = time.monotonic()
        self.busy = True
        self.caller, self.setup = None, None
        try:
            import cloudpickle

            fn = instantiate(cloudpickle.loads(spec.fn))
            self.caller = Caller(spec, fn)  # type: ignore[arg-type]
        except BaseException as exc:
            self.setup = (dump_error(exc), format_traceback(exc))
            return ("setup", *self.setup)
        return ("ready", os.getpid())

    def end_job(self) -> None:
        """The run is over: drop the stage's function (and what it holds)."""
        self.caller = self.setup = None
        self.busy = False
        self.last = time.monotonic()

    def pid(self) -> int:
        return os.getpid()

    def run(self, seq: int, keys: Sequence[int], values: list[Any]) -> tuple[Any, ...]:
        self.last = time.monotonic()
        if self.caller is None:
            assert self.setup is not None
            return ("setup", *self.setup)
        done = self.caller.run(Chunk(seq, keys, values))
        errors = [(f.key, dump_error(f.error), f.traceback) for f in done.errors]
        outputs = [(list(k), v) for k, v in done.outputs]
        self.last = time.monotonic()
        return ("done", outputs, done.completed, done.dropped, errors, done.busy_s)


_actor_class: Any = None


def _remote_actor(ray: Any) -> Any:
    global _actor_class
    if _actor_class is None:
        _actor_class = ray.remote(max_restarts=0, max_task_retries=0)(StageActor)
    return _actor_class


class IdleActors:
    """Actors that finished a run cleanly, kept for the next run (a Ray actor takes a second or
    more to start). Only an actor whose run ended normally comes back: one that crashed, ran
    late, or was stopped mid-call (an error, an early exit, Ctrl-C) is killed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._actors: list[tuple[Any, float]] = []

    def take(self, ray: Any) -> Any:
        now = time.monotonic()
        with self._lock:
            while self._actors:
                actor, since = self._actors.pop()
                if now - since < IDLE_S - IDLE_MARGIN_S:
                    return actor
                _kill_actor(ray, actor)
        return _remote_actor(ray).remote()

    def give(self, ray: Any, actor: Any) -> None:
        with contextlib.suppress(Exception):
            actor.end_job.remote()
        with self._lock:
            if len(self._actors) < MAX_IDLE:
                self._actors.append((actor, time.monotonic()))
                return
        _kill_actor(ray, actor)

    def release(self) -> None:
        """Kill every idle actor (`RayEngine.shutdown`, and the tests between two tests)."""
        with self._lock:
            actors, self._actors = self._actors, []
        ray = sys.modules.get("ray")
        if ray is not None and actors and ray.is_initialized():
            for actor, _ in actors:
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

    def __init__(self, work: StageWork, ray: Any) -> None:
        self.work = work
        self.ray = ray
        self.timed = work.options.timeout is not None
        spec = Spec(
            work.name,
            work.kind,
            dump_callable(work.name, work.fn),
            work.options,
            work.ports,
            work.position,
            work.seed,
        )
        self._spec = ray.put(spec)
        self._lock = threading.Lock()
        self._actors: dict[int, Any] = {}
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
        actor = _remote_actor(self.ray).remote() if fresh else IDLE.take(self.ray)
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
            IDLE.give(self.ray, actor)

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
            self._calls(slot)
        except (Cancelled, StopStage):
            pass
        except BaseException as exc:  # e.g. a replacement actor that cannot be made
            if not self.stopped():
                with contextlib.suppress(Cancelled):
                    self.work.setup_failed(exc, format_traceback(exc), None)
        finally:
            if slot in self._clean:  # its actor holds no call: it is kept for a later run
                self._give_back(slot)
            else:
                self._kill(slot)
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
                result = self._wait(ref, deadline)
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

    def _deadline(self) -> float | None:
        timeout = self.work.options.timeout
        return None if timeout is None else time.monotonic() + timeout

    def _await_ready(self, slot: int) -> None:
        """Wait for the slot's actor to have made the stage's function; an idle actor that
        has gone meanwhile is replaced by a fresh one."""
        for attempt in range(2):
            try:
                result = self._wait(self._ready[slot], None)
            except _Died:
                self._kill(slot)
                if attempt:
                    raise
                self._new_actor(slot, fresh=True)
                continue
            assert result is not None
            self._check_setup(result)
            return

    def _wait(self, ref: Any, deadline: float | None) -> tuple[Any, ...] | None:
        """The actor's answer; None when ``deadline`` passes first; _Died when it is gone."""
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
        return result

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
                    result = self._wait(ref, self._deadline())
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
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, min(POLL_S * 4, deadline - time.monotonic())))
        return not any(t.is_alive() for t in self._threads if t is not threading.current_thread())
