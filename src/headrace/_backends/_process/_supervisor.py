"""The parent side of the process backend: one supervisor thread per worker process.

    supervisor thread i                                worker process (slot i)
    -------------------                                -----------------------
    next_chunk() -> chunk --- task pipe ----------->   runs it (see `_worker`)
    wait(result pipe, sentinel, wake pipe)
    finish(Done) <----------- result pipe ----------   results (arrays in shared memory)
    sentinel fires: read the progress board (the chunk and the item the worker ran), settle
    that item (retry, or fail it), send its chunks again to a fresh worker

A supervisor never polls with sleeps. Workers come from `WARM` (idle ones of earlier runs)
or are started; a worker that finishes its job cleanly goes back to `WARM`.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import multiprocessing
import multiprocessing.connection
import multiprocessing.util
import os
import pickle
import signal
import struct
import threading
import time
import warnings
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

from ..._errors import SerializationError, WorkerCrashedError, format_traceback, shorten
from ..._shm import (
    HEADER,
    InSlot,
    Mapper,
    SlotPool,
    create,
    decode,
    encode,
    make_directory,
    remove_run,
    run_token,
    sweep_stale,
)
from ..._stages import STREAM_KINDS
from ..._transport import Cancelled, Daemon, StopStage
from .._base import (
    Chunk,
    Done,
    Failure,
    StageWork,
    TailFigures,
    Workers,
    cloudpickle_dumps,
    timeout_error,
)
from ._protocol import (
    _IDLE,
    BIG_RESULT,
    CRASH_LOOP,
    CRASH_WINDOW_S,
    DEPTH,
    PIPE_BYTES,
    PIPE_SAFE,
    SLOW_CHUNK_S,
    STOP_GRACE_S,
    Again,
    Boxed,
    CallEntry,
    Calls,
    ChunkResult,
    End,
    Failed,
    Finished,
    Idle,
    Items,
    Job,
    Log,
    Message,
    Outputs,
    Ready,
    Results,
    SetupFailed,
    Spec,
    _load_error,
    _TransitError,
)
from ._start import NO_GUARD_EXIT, NO_GUARD_HINT, _context, default_start_method, main_script
from ._warm import WARM
from ._worker import worker_main

#: How long a stage's other forkserver workers wait for its first one to be set up before
#: they start anyway (see `ProcessWorkers.__init__`): on few cores their start would slow its.
HEAD_START_S = 0.05


def _grow_pipe(conn: Connection) -> int:
    """Ask for a pipe of `PIPE_BYTES`; the bytes it holds now."""
    try:
        import fcntl

        fcntl.fcntl(conn.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        return int(fcntl.fcntl(conn.fileno(), fcntl.F_GETPIPE_SZ))
    except (ImportError, AttributeError, OSError):
        return 2 * PIPE_SAFE


# --- the parent side ---------------------------------------------------------------------------


class Proc:
    """One worker process as its supervisor holds it."""

    def __init__(self, ctx: Any, method: str) -> None:
        self.method = method
        self.tasks_r, self.tasks = ctx.Pipe(duplex=False)
        self.results, self.results_w = ctx.Pipe(duplex=False)
        alive_r, self.alive = ctx.Pipe(duplex=False)
        self.pipe_bytes = min(_grow_pipe(self.tasks), _grow_pipe(self.results))
        deathsig = method == "forkserver" or (threading.current_thread() is threading.main_thread())
        self.process = ctx.Process(
            target=worker_main,
            args=(self.tasks_r, self.results_w, alive_r, deathsig),
            name="headrace-worker",
            daemon=False,  # a worker may run a process pipeline of its own
        )
        self.process.start()
        for end in (self.tasks_r, self.results_w, alive_r):
            end.close()
        self.pid = self.process.pid or 0
        self.sentinel = self.process.sentinel
        self.slot = 0
        self.ready = False  # the worker has set up and asks for its first item
        self.idle_since = 0.0
        self._exitcode: int | None = None
        self._stopped = False

    def start_job(self, spec: Spec, slot: int) -> None:
        """Give the worker a stage to run (as worker ``slot`` of it)."""
        self.slot = slot
        self.ready = False
        self.tasks.send_bytes(pickle.dumps(Job(spec, slot), protocol=5))

    def send(self, message: Message) -> None:
        self.tasks.send_bytes(pickle.dumps(message, protocol=5))

    def stop(self, grace: float) -> None:
        """Ask the worker to end, then escalate: SIGTERM, SIGKILL. Once stopped, again is a
        no-op (a worker retired after a crash is retired again when its supervisor ends)."""
        if self._stopped or self._exitcode is not None:
            return  # stopped (and closed) already
        self._stopped = True
        with contextlib.suppress(OSError, ValueError):
            self.alive.send_bytes(b"stop")  # the worker's watcher exits it at once
        with contextlib.suppress(OSError, ValueError):
            self.alive.close()
        self.process.join(grace)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(STOP_GRACE_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(1.0)
        self.close_pipes()
        if not self.process.is_alive():
            self._exitcode = self.process.exitcode
            with contextlib.suppress(ValueError):
                self.process.close()  # its sentinel's fd now, not when garbage is collected

    @property
    def exitcode(self) -> int | None:
        if self._exitcode is not None:
            return self._exitcode
        with contextlib.suppress(ValueError):
            code: int | None = self.process.exitcode
            return code
        return None

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.process.kill()

    def close_pipes(self) -> None:
        for conn in (self.tasks, self.results, self.alive):
            with contextlib.suppress(OSError):
                conn.close()

    def describe_exit(self) -> str:
        code = self.exitcode
        if code is None:
            return "is gone"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"was killed by {signal.Signals(-code).name}"
            return f"was killed by signal {-code}"
        return f"exited with code {code}"


class ProcessWorkers(Workers):
    """The worker processes of one stage and their supervisor threads."""

    def __init__(self, work: StageWork) -> None:
        self.work = work
        self.method = work.start_method or default_start_method()
        self.ctx = _context(self.method)
        _sweep_now_and_then()
        self.token = run_token()
        budget = work.shm_budget
        progress = f"hr-{self.token}-progress"
        # Fails first if fn cannot travel.
        self.spec = Spec(work, self.token, budget, progress, work.tail_spec)
        self._progress = _create_progress(progress, work.options.workers)
        make_directory(self.spec.slots)
        self.pool = SlotPool(self.token, budget)
        self.mapper = Mapper()
        self._lock = threading.Lock()
        self._procs: dict[int, Proc] = {}
        self._feeders: list[Daemon] = []
        self._crash_times: deque[tuple[float, int]] = deque()  # when, which item
        self._crashes: dict[int, int] = {}  # item index -> times it crashed (or ran late)
        self._start_deaths = 0  # workers in a row that died before asking for an item
        self._avg_bytes: float | None = None
        self.pipe_safe = PIPE_SAFE
        self._ended = 0  # supervisor threads that have ended
        self._joined = False  # a close gave up on a supervisor thread
        self._cleaned = False
        self._big = False
        self._in_slot = InSlot()  # when a chunk is pickled straight into a slot
        self._slow = False  # chunks take long: one queued per worker would idle the others
        self.closing = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        # Set once every worker was killed (interpreter exit, a close that ran late): a
        # supervisor must not start a replacement for a killed worker then.
        self._killed = threading.Event()
        self._finalizer = multiprocessing.util.Finalize(
            self, _kill_all, args=(self._procs, self.token, self._killed), exitpriority=100
        )
        # Workers of other start methods start here, in the thread that starts the run (a
        # process they start from another thread gets no parent-death signal: see `Proc`), and
        # a failure to start raises to it. forkserver workers start in their supervisor
        # threads: each start waits for the server to fork it (on a first run, for the server
        # to boot), and the run's thread goes on setting up the next stages meanwhile. The
        # server forks them in the order asked for: the others of a stage ask once its first
        # has started and is set up (at most `HEAD_START_S` later), so that the first worker
        # of every stage comes before them and sets up without competing with them.
        procs: list[Proc | None] = []
        self._first_started = threading.Event()  # or the run is cancelled
        self._first_ready = threading.Event()
        if self.method != "forkserver":
            self._first_started.set()
            self._first_ready.set()
        try:
            while len(procs) < work.options.workers and self._first_started.is_set():
                procs.append(self._start_first(len(procs)))
        except BaseException:
            _kill_all(self._procs, self.token, self._killed)
            self._cleanup()
            raise
        procs += [None] * (work.options.workers - len(procs))
        work.on_cancel(self.wake)
        self._threads = [
            Daemon(self._supervise, (slot, proc), f"headrace-{work.name}-{slot}")
            for slot, proc in enumerate(procs)
        ]
        for thread in self._threads:
            thread.start()

    def wake(self) -> None:
        """Wake every supervisor from its wait (the run is cancelled or closing)."""
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        self._first_started.set()  # a supervisor waiting to start its worker sees the cancel
        self._first_ready.set()

    def cancelled(self) -> bool:
        return self.closing or self._killed.is_set() or _cancelled(self.work)

    # --- starting and stopping workers --------------------------------------------------

    def _start(self, slot: int) -> Proc:
        """A worker for ``slot``: a warm one left idle by an earlier run, or a new one."""
        proc = WARM.take(self.method)
        if proc is None:
            proc = Proc(self.ctx, self.method)
        elif slot == 0:
            self._first_ready.set()  # set up already: the others need not wait for it
        self.pipe_safe = max(PIPE_SAFE, proc.pipe_bytes // 2)
        with self._lock:
            self._procs[slot] = proc
        if self._killed.is_set():  # every worker was killed meanwhile (the program exits)
            proc.kill()
            raise Cancelled
        # One that died while idle shows in its sentinel; the supervisor replaces it.
        with contextlib.suppress(OSError):
            proc.start_job(self.spec, slot)
        return proc

    def _start_first(self, slot: int) -> Proc:
        """Start a worker; if the forkserver cannot start (e.g. its socket path in a long
        $TMPDIR is too long), say so and use spawn."""
        try:
            return self._start(slot)
        except OSError as exc:
            if self.method != "forkserver":
                raise
            warnings.warn(
                f"headrace: the forkserver could not start ({exc}); starting workers with "
                "'spawn' instead (slower to start). A shorter $TMPDIR fixes it.",
                RuntimeWarning,
                stacklevel=2,
            )
            self.method = "spawn"
            self.ctx = _context("spawn")
            return self._start(slot)

    def _start_in_thread(self, slot: int) -> Proc:
        """Start the worker of ``slot`` in its supervisor thread (see __init__): the stage's
        first, or another once the first has started and is set up (or `HEAD_START_S`
        passed)."""
        if slot == 0:
            try:
                proc = self._start_first(0)  # may change the start method (to spawn)
            except BaseException:
                self._first_ready.set()
                raise
            finally:
                self._first_started.set()
            if self.work.kind in STREAM_KINDS:
                self._first_ready.set()
            return proc
        self._first_started.wait()
        self._first_ready.wait(HEAD_START_S)
        if self.cancelled():
            raise Cancelled
        return self._start(slot)

    def _retire(self, proc: Proc, grace: float) -> None:
        proc.stop(grace)
        self.pool.release_held_by(proc.pid)

    # --- supervising one worker ---------------------------------------------------------

    def _supervise(self, slot: int, proc: Proc | None) -> None:
        idle = False  # the worker finished its job cleanly and waits for another
        try:
            if proc is None:  # not started by the run's thread (see __init__)
                proc = self._start_in_thread(slot)
            if self.work.kind in STREAM_KINDS:
                idle = self._run_stream(proc)
            else:
                idle = self._run_calls(slot, proc)
        except (Cancelled, StopStage):
            pass
        except BaseException as exc:  # e.g. a replacement worker that cannot start
            if not self.cancelled():
                with contextlib.suppress(Cancelled):
                    self.work.setup_failed(exc, format_traceback(exc), None)
        finally:
            with self._lock:
                proc = self._procs.get(slot, proc)
                if idle and not self.closing and proc is not None:  # healthy: keep it for later
                    del self._procs[slot]
                    proc.ready = False
                else:
                    idle = False
            if proc is None:
                pass  # it could not start
            elif idle:
                self.pool.release_held_by(proc.pid)
                WARM.give(proc)
            else:
                self._retire(proc, 0.0 if self.cancelled() else 1.0)
            self.work.worker_exited()
            with self._lock:
                self._ended += 1
                last = self._ended == len(self._threads) and self._joined
            if last:  # a close gave up waiting for this thread: finish its clean-up now
                self._cleanup()

    def _run_calls(self, slot: int, proc: Proc) -> bool:
        work = self.work
        timed = work.options.timeout is not None
        held: dict[int, Chunk] = {}  # seq -> chunk the worker holds, in the order sent
        sent: deque[tuple[list[int], float]] = deque()  # messages sent: seqs, time sent
        again: deque[Chunk] = deque()  # chunks to send (again): a dead worker's, split ones
        held_back: Chunk | None = None  # a large chunk waiting for an idle worker
        ended = False
        while True:
            if self.cancelled():
                return False
            depth = 1 if timed or self._big or self._slow else DEPTH
            while len(sent) < depth and (proc.ready or not timed):
                if held_back is not None:
                    if sent:
                        break
                    chunk, held_back = held_back, None
                elif again:
                    chunk = again.popleft()
                elif not ended:
                    taken = work.next_chunk(block=not sent)
                    if taken is None:
                        ended = True
                        break
                    if taken is False:
                        break
                    assert isinstance(taken, Chunk)
                    chunk = taken
                else:
                    break
                message = self._calls_message(chunk, proc.pid)
                if message is None:
                    continue
                if len(message) > self.pipe_safe:
                    message = self._boxed(message, proc.pid)
                if len(message) > self.pipe_safe and sent:
                    held_back = chunk
                    break
                held[chunk.seq] = chunk
                sent.append(([chunk.seq], time.monotonic()))
                with contextlib.suppress(OSError):  # a dead worker shows in its sentinel
                    proc.tasks.send_bytes(message)
            if not sent and (proc.ready or not timed):
                if ended and not again and held_back is None:
                    with contextlib.suppress(OSError):
                        proc.send(End())
                    return self._await_idle(proc)
                continue
            timeout = None
            if timed and sent:
                assert work.options.timeout is not None
                timeout = max(0.0, sent[0][1] + work.options.timeout - time.monotonic())
            ready: list[Any] = multiprocessing.connection.wait(
                [proc.results, proc.sentinel, self._wake_r], timeout
            )
            if proc.results in ready or (proc.sentinel in ready and proc.results.poll()):
                try:
                    message = pickle.loads(proc.results.recv_bytes())
                except (EOFError, OSError):
                    message = None
                if message is not None:
                    self._handle(proc, message, held, sent, again)
                    continue
            if proc.sentinel in ready or (not ready and timed and sent):
                late = not ready
                proc = self._replace(slot, proc, held, sent, again, late)
                continue
            if self._wake_r in ready and self.cancelled():
                return False

    def _boxed(self, message: bytes, pid: int) -> bytes:
        """A message too large for the pipe, put in a slot (`Boxed`); as it is if no slot is
        free (it then waits until the worker is idle)."""
        slot = self.pool.put(memoryview(message), pid)
        if slot is None:
            return message
        return pickle.dumps(Boxed((slot.name, 0, len(message))), protocol=5)

    def _await_idle(self, proc: Proc) -> bool:
        """After the end of its input: True once the worker says it is idle (healthy, ready
        for another job), False if it dies or takes too long. (The run closing meanwhile is
        no reason to stop waiting: it closes as soon as its last item is out.)"""
        deadline = time.monotonic() + STOP_GRACE_S * 10
        while (left := deadline - time.monotonic()) > 0 and not self.closing:
            ready = multiprocessing.connection.wait([proc.results, proc.sentinel], left)
            if proc.results in ready:
                try:
                    message = pickle.loads(proc.results.recv_bytes())
                except (EOFError, OSError):
                    return False
                if isinstance(message, Idle):
                    return True
                if isinstance(message, Log):
                    self._log(proc, message.fields)
                continue
            if proc.sentinel in ready:
                return False
        return False

    def _calls_message(self, chunk: Chunk, pid: int) -> bytes | None:
        """The pipe message for ``chunk``: its values in one pickle, or (a split chunk) one
        pickle per item. Items that cannot be pickled are settled as failures at once, and the
        chunk is sent without them (or finished, if none is left)."""
        if not chunk.values:
            self._let_go(chunk)
            self.work.finish(Done(chunk, [([], []) for _ in range(self.work.ports)], 0))
            return None
        if not chunk.split:
            if chunk.sent is not None and chunk.sent[0] is not None:  # sent before: again
                data, places = chunk.sent[0], chunk.sent[1]
                self.pool.hold_again(places, pid)
            elif (
                in_slot := self._in_slot.encode(chunk.values, len(chunk.values), self.pool, pid)
            ) is not None:
                self._let_go(chunk)
                data, places = in_slot  # not kept: sent again, it is pickled again
            else:
                try:
                    data, places = encode(chunk.values, self.pool, pid, cloudpickle_dumps)
                except Exception:
                    chunk.split = True
                else:
                    self._let_go(chunk)  # an older encoding, of values that changed since
                    self._in_slot.learn(data, places, len(chunk.values))
                    if places:
                        self._keep(chunk, data, places)
            if not chunk.split:
                entry = CallEntry(chunk.seq, chunk.keys, False, data, places, chunk.base)
                return pickle.dumps(Calls([entry]), protocol=5)
        parts, keys, values = [], [], []
        for key, value in zip(chunk.keys, chunk.values, strict=True):
            try:
                parts.append(encode(value, self.pool, pid, cloudpickle_dumps))
            except Exception as exc:
                error = _transit(self.work.name, key, f"item {key} could not be pickled", exc)
                chunk.failures.append(Failure(key, error, format_traceback(exc)))
                continue
            keys.append(key)
            values.append(value)
        chunk.keys, chunk.values = keys, values
        self._let_go(chunk)  # sent item by item from now on
        if not values:
            self.work.finish(Done(chunk, [([], []) for _ in range(self.work.ports)], 0))
            return None
        return pickle.dumps(Calls([CallEntry(chunk.seq, keys, True, parts, [])]), protocol=5)

    def _keep(self, chunk: Chunk, data: bytes, places: list[Any]) -> None:
        """Keep a chunk's arrays only in the slots that carry them: its values become views of
        those slots (pinned until the chunk is done), and the originals can be freed. The
        parent would otherwise hold every array in flight twice, to send it again if its
        worker dies."""
        try:
            values = self.pool.keep(data, places)
        except Exception:  # keep the originals
            self.pool.let_go(places)
            return
        chunk.sent = (data, places)
        chunk.values = values

    def _let_go(self, chunk: Chunk) -> None:
        if chunk.sent is not None:
            self.pool.let_go(chunk.sent[1])
            chunk.sent = None

    def _handle(
        self,
        proc: Proc,
        message: Message,
        held: dict[int, Chunk],
        sent: deque[tuple[list[int], float]],
        again: deque[Chunk],
    ) -> None:
        if isinstance(message, Ready):
            proc.ready = True
            if proc.slot == 0:
                self._first_ready.set()
            self._start_deaths = 0
        elif isinstance(message, Log):
            self._log(proc, message.fields)
        elif isinstance(message, SetupFailed):
            self.work.setup_failed(_load_error(message.error), message.traceback, None)
            raise Cancelled
        elif isinstance(message, Results):
            sent.popleft()
            for entry in message.entries:
                chunk = held.pop(entry.seq)
                if isinstance(entry, Again):  # the worker could not unpickle it whole
                    chunk.split = True
                    again.append(chunk)
                    continue
                got = self._done(chunk, entry)
                if got is None:  # its results could not be unpickled whole
                    chunk.split = True
                    again.append(chunk)
                    continue
                self._learn(got[0], got[1])
                try:
                    self.work.finish(got[0])
                finally:
                    self._let_go(chunk)

    def _done(self, chunk: Chunk, entry: ChunkResult) -> tuple[Done, int] | None:
        """The `Done` a worker's entry describes, and the bytes its results took; None when a
        whole-chunk result cannot be unpickled (the chunk then runs again item by item, to
        find the item: its items run twice)."""
        _, outputs, completed, dropped, errors, busy, tail, nbytes = entry
        failures = self._failures(self.work.name, errors)
        ports: list[tuple[Sequence[int], list[Any]]] = []
        size = 0
        for keys, split, data, places in outputs:
            if not split:
                try:
                    ports.append((keys, decode(data, places, self.mapper)))
                except Exception:
                    return None
                size += len(data) + sum(p[2] for p in places)
                continue
            good_keys, good_values = [], []
            for key, part in zip(keys, data, strict=True):
                if part is None:
                    continue  # its failure is in ``errors``
                try:
                    good_values.append(decode(part[0], part[1], self.mapper))
                    good_keys.append(key)
                except Exception as exc:
                    what = f"the result of item {key} could not be unpickled"
                    error = _transit(self.work.name, key, what, exc)
                    if key not in {f.key for f in failures}:
                        failures.append(Failure(key, error, format_traceback(exc)))
                        completed -= 1
            ports.append((good_keys, good_values))
        done = Done(chunk, ports, completed, dropped, failures, busy)
        if not any(split for _, split, _, _ in outputs):  # else: fewer values than the worker's
            done.nbytes = nbytes
        if tail is not None:
            names = self.work.tail_names
            done.tail = [
                TailFigures(n, ok, lost, self._failures(names[i], errs), secs)
                for i, (n, ok, lost, errs, secs) in enumerate(tail)
            ]
        return done, size

    @staticmethod
    def _failures(stage: str, errors: list[tuple[Any, ...]]) -> list[Failure]:
        return [
            Failure(key, _from_worker(_load_error(data), stage, key), tb)
            for key, data, tb in errors
        ]

    def _learn(self, done: Done, size: int) -> None:
        """Large results: the stage holds one chunk (of one item) per worker and one more
        (waiting in the reorder window for a slower earlier item); each one held is memory."""
        per_item = size / max(1, len(done.chunk.values))
        if self._avg_bytes is None:
            self._avg_bytes = per_item
        else:
            self._avg_bytes = 0.7 * self._avg_bytes + 0.3 * per_item
        # A chunk that takes SLOW_CHUNK_S or more makes a pipe round trip negligible: a worker
        # then holds one chunk at a time, so that none is left waiting behind a slow one at the
        # end of the input while another worker is idle.
        self._slow = done.busy_s >= SLOW_CHUNK_S
        big = self._avg_bytes >= BIG_RESULT
        if big != self._big:
            self._big = big
            workers = self.work.options.workers
            self.work.set_window(workers + 1 if big else (DEPTH + 1) * workers)

    def _replace(
        self,
        slot: int,
        proc: Proc,
        held: dict[int, Chunk],
        sent: deque[tuple[list[int], float]],
        again: deque[Chunk],
        late: bool,
    ) -> Proc:
        """The worker died (or ran late): settle the item it ran and start a fresh worker.
        The chunks it held go again, in order (also their items that ran before the crash:
        their results had not been sent)."""
        seq, index = struct.unpack_from("<qq", self._progress, 16 * slot)
        if late:
            proc.kill()
        proc.process.join(1.0)
        self._retire(proc, 0.0)
        if late and seq == _IDLE and held:
            seq, index = next(iter(held)), 0
        chunks = list(held.values())  # in the order sent
        held.clear()
        sent.clear()
        if self.cancelled():
            raise Cancelled
        self._check_start(proc, late)
        culprit = next((c for c in chunks if c.seq == seq), None)
        if culprit is not None and not 0 <= index < len(culprit.values):
            culprit = None
        if culprit is not None:
            self._settle(proc, culprit, index, late)
        again.extendleft(reversed(chunks))
        return self._start(slot)

    def _check_start(self, proc: Proc, late: bool) -> None:
        """A worker died before it asked for an item: fail the run at once if it re-ran an
        unguarded main script, or after `CRASH_LOOP` such deaths in a row (a worker that
        cannot start would otherwise be replaced for ever)."""
        if proc.exitcode == NO_GUARD_EXIT:
            self.work.setup_failed(_no_guard(self.work.name, proc, self.method), "", None)
            raise Cancelled
        if proc.ready or late:
            self._start_deaths = 0
            return
        self._start_deaths += 1
        if self._start_deaths >= CRASH_LOOP:
            what = (
                f"stage {self.work.name!r}: {self._start_deaths} worker processes in a row died "
                f"before they could start (the last one, {proc.pid}, {proc.describe_exit()}); "
                "their output above says why"
            )
            self.work.setup_failed(_crash(what, self.work.name, proc, None), "", None)
            raise Cancelled

    def _settle(self, proc: Proc, chunk: Chunk, index: int, late: bool) -> None:
        """Item ``index`` of ``chunk`` crashed its worker (or ran late): it goes again if its
        retries allow, else it fails (and the rest of the chunk goes again without it). Many
        different items crashing within `CRASH_WINDOW_S` is a crash loop: the run ends."""
        work = self.work
        key = chunk.keys[index]
        now = time.monotonic()
        self._crash_times.append((now, key))
        while self._crash_times and self._crash_times[0][0] < now - CRASH_WINDOW_S:
            self._crash_times.popleft()
        if late:
            assert work.options.timeout is not None
            error: BaseException = timeout_error(work.name, key, work.options.timeout)
        else:
            what = (
                f"stage {work.name!r}: worker process {proc.pid} {proc.describe_exit()} "
                f"while running item {key}"
            )
            error = _crash(what, work.name, proc, key)
            distinct = {k for _, k in self._crash_times}
            if len(distinct) >= CRASH_LOOP:
                loop = (
                    f"{what}: workers died on {len(distinct)} different items within "
                    f"{CRASH_WINDOW_S:g} s; stopping (crash loop)"
                )
                work.setup_failed(_crash(loop, work.name, proc, key), "", key)
                raise Cancelled
        tries = self._crashes[key] = self._crashes.get(key, 0) + 1
        if tries <= work.options.retries:
            return  # the whole chunk goes again
        chunk.failures.append(Failure(key, error, ""))
        chunk.keys = [k for i, k in enumerate(chunk.keys) if i != index]
        chunk.values = [v for i, v in enumerate(chunk.values) if i != index]
        if chunk.sent is not None:  # encoded again when sent; its slots stay pinned till then
            chunk.sent = (None, chunk.sent[1])

    def _log(self, proc: Proc, fields: dict[str, Any]) -> None:
        record = logging.makeLogRecord(fields)
        record.processName = f"{self.work.name}/worker-{proc.slot}"
        record.headrace_stage = self.work.name
        record.headrace_worker = proc.pid
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)

    # --- stream stages: a feeder thread sends, the supervisor receives -------------------

    def _run_stream(self, proc: Proc) -> bool:
        feeder = Daemon(self._feed, (proc,), f"{threading.current_thread().name}-feed")
        feeder.start()
        with self._lock:
            self._feeders.append(feeder)
        while True:
            ready = multiprocessing.connection.wait([proc.results, proc.sentinel, self._wake_r])
            if proc.results in ready or (proc.sentinel in ready and proc.results.poll()):
                try:
                    message = pickle.loads(proc.results.recv_bytes())
                except (EOFError, OSError):
                    continue
                if isinstance(message, Finished):
                    return self._await_idle(proc)
                self._handle_stream(proc, message)
                continue
            if proc.sentinel in ready:
                proc.process.join(1.0)
                if proc.exitcode == NO_GUARD_EXIT:
                    error = _no_guard(self.work.name, proc, self.method)
                    self.work.setup_failed(error, "", None)
                    raise Cancelled
                what = (
                    f"stage {self.work.name!r}: worker process {proc.pid} "
                    f"{proc.describe_exit()} while running the stage's function"
                )
                self.work.setup_failed(_crash(what, self.work.name, proc, None), "", None)
                raise Cancelled
            if self.cancelled():
                return False

    def _feed(self, proc: Proc) -> None:
        try:
            in_slot = InSlot(ahead=InSlot.STREAM_AHEAD)
            for keys, values in self.work.stream_chunks():
                encoded = in_slot.encode(values, len(values), self.pool, proc.pid)
                if encoded is None:
                    try:
                        encoded = encode(values, self.pool, proc.pid, cloudpickle_dumps)
                    except Exception:  # an item cannot travel: it fails (under raise, the run)
                        keys, values = self._sendable(keys, values)
                        if not values:
                            continue
                        encoded = encode(values, self.pool, proc.pid, cloudpickle_dumps)
                    in_slot.learn(*encoded, len(values))
                proc.send(Items(keys, *encoded))
            proc.send(End())
        except (Cancelled, StopStage, OSError, EOFError):
            pass
        except Exception as exc:  # a fault of the feeder's own: the run fails, it does not wait
            self.work.setup_failed(exc, format_traceback(exc))

    def _sendable(self, keys: Sequence[int], values: list[Any]) -> tuple[list[int], list[Any]]:
        """The items of a stream stage's chunk that can be pickled; each other one is the
        stage's error (skipped under on_error='skip', else the run's failure)."""
        good_keys, good = [], []
        for key, value in zip(keys, values, strict=True):
            try:
                cloudpickle_dumps(value)
            except Exception as exc:
                error = _transit(self.work.name, key, f"item {key} could not be pickled", exc)
                self.work.stream_failed(error, format_traceback(exc))
                continue
            good_keys.append(key)
            good.append(value)
        return good_keys, good

    def _handle_stream(self, proc: Proc, message: Message) -> None:
        if isinstance(message, Log):
            self._log(proc, message.fields)
        elif isinstance(message, Outputs):
            for data, places in message.outputs:
                self.work.emit(decode(data, places, self.mapper))
            self.work.flush()
        elif isinstance(message, Failed):
            error = _from_worker(_load_error(message.error), self.work.name, None)
            self.work.stream_failed(error, message.traceback)
        elif isinstance(message, SetupFailed):
            self.work.setup_failed(_load_error(message.error), message.traceback, None)
            raise Cancelled

    # --- the end ------------------------------------------------------------------------

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        try:
            for thread in self._threads:
                thread.wait_end(deadline - time.monotonic())
            if any(t.is_alive() for t in self._threads):
                self.closing = True
                self.wake()
                _kill_all(self._procs, None, self._killed)
                for thread in self._threads:
                    thread.wait_end(0.5)
            with self._lock:
                feeders = list(self._feeders)
            for feeder in feeders:
                feeder.wait_end(deadline - time.monotonic())
        except BaseException:  # a second Ctrl-C while closing: kill at once
            self.closing = True
            _kill_all(self._procs, None, self._killed)
            self._cleanup_at_last_end()
            raise
        alive = any(t.is_alive() for t in self._threads + feeders)
        if alive:
            self._cleanup_at_last_end()
        else:
            self._cleanup()
        return not alive

    def _cleanup_at_last_end(self) -> None:
        """A close that stops waiting for the supervisor threads (they ran late, or a Ctrl-C
        interrupted it): the workers are dead, and no segment may outlive the run. A supervisor
        still busy makes no new slot (the pool is closed); the last one to end finishes the
        clean-up, or this does if they all have."""
        self.pool.close()
        remove_run(self.token)
        with self._lock:
            self._joined = True
            last = self._ended == len(self._threads)
        if last:
            self._cleanup()

    def _cleanup(self) -> None:
        """Close what the stage holds; once (a close may run again after a Ctrl-C, and the last
        supervisor thread may be the one that does it)."""
        with self._lock:
            if self._cleaned:
                return
            self._cleaned = True
            procs = list(self._procs.values())
        for proc in procs:
            proc.close_pipes()
        self.pool.close()
        self.mapper.close()
        with contextlib.suppress(BufferError, ValueError):
            self._progress.close()
        remove_run(self.token)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1
        self._finalizer.cancel()
        _sweep_now_and_then()


#: What a `SerializationError` suggests.
_PICKLE_HINT = (
    "values that cross between processes must pickle: plain data, arrays, objects of "
    "importable classes (not locks, open files, sockets or generators)"
)


def _transit(stage: str, key: int | None, what: str, cause: BaseException) -> SerializationError:
    """The error for an item or result of ``stage`` that could not cross: ``what`` happened,
    ``cause`` (the pickling error) as its cause."""
    error = SerializationError(
        f"stage {stage!r}: {what}: {type(cause).__name__}: {shorten(str(cause), 300)}; "
        + _PICKLE_HINT,
        stage=stage,
        index=key,
    )
    error.__cause__ = cause
    return error


def _from_worker(error: BaseException, stage: str, key: int | None) -> BaseException:
    """A worker's failure as the consumer gets it: what the worker could not pickle (or
    unpickle) becomes a `SerializationError` naming the stage and the item."""
    if not isinstance(error, _TransitError):
        return error
    text = str(error.args[0]) if error.args else "an item could not cross"
    what = text.split(": ", 1)[0]
    cause = getattr(error, "cause", None)
    if not isinstance(cause, BaseException):  # the pickling error itself did not travel
        cause = RuntimeError(text.split(": ", 1)[-1])
    return _transit(stage, key, what, cause)


def _no_guard(stage: str, proc: Proc, method: str) -> WorkerCrashedError:
    return _crash(
        f"stage {stage!r}: the worker processes re-run {main_script()}, which starts a "
        f"pipeline at import (start method {method!r}): {NO_GUARD_HINT}",
        stage,
        proc,
        None,
    )


def _crash(message: str, stage: str, proc: Proc, key: int | None) -> WorkerCrashedError:
    return WorkerCrashedError(
        message, stage=stage, worker=str(proc.pid), exitcode=proc.exitcode, index=key
    )


#: Seconds between two sweeps of dead runs' segments by one program. The first is at its first
#: process stage; later ones when a process stage starts or ends, so that a long-lived program
#: also removes what a killed neighbour left (a sweep lists /dev/shm: about 0.1 ms).
SWEEP_EVERY_S = 10.0
_last_sweep: float | None = None
_sweep_lock = threading.Lock()


def _sweep_now_and_then() -> None:
    """Remove what runs whose every process was killed at once left in /dev/shm (their resource
    tracker died with them), at most every `SWEEP_EVERY_S` seconds."""
    global _last_sweep
    now = time.monotonic()
    with _sweep_lock:
        if _last_sweep is not None and now - _last_sweep < SWEEP_EVERY_S:
            return
        _last_sweep = now
    sweep_stale()


def _cancelled(work: StageWork) -> bool:
    execution = getattr(work, "execution", None)
    return bool(execution is not None and execution.state.cancelled)


def _create_progress(name: str, workers: int) -> mmap.mmap:
    """The shared board where each worker writes the seq of the chunk it runs, and the
    position in it of the item it calls."""
    board = create(name, max(HEADER, 16 * workers))
    for slot in range(workers):
        struct.pack_into("<qq", board, 16 * slot, _IDLE, 0)
    return board


def _kill_all(procs: dict[int, Proc], token: str | None, killed: threading.Event) -> None:
    """Kill every worker at once (interpreter exit, a second Ctrl-C, a close that ran late);
    ``killed`` tells the supervisors not to replace them (at interpreter exit a replacement
    would be a live child that multiprocessing waits for forever)."""
    killed.set()
    for proc in list(procs.values()):
        proc.kill()
    for proc in list(procs.values()):
        with contextlib.suppress(Exception):
            proc.process.join(1.0)
    if token is not None:
        remove_run(token)
