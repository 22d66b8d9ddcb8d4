"""The driver's side of a Ray stage (`RayWorkers`): one thread per actor, which sends it
chunks (a call stage) or takes its outputs (a stream stage, whose input a feeder thread puts),
settles what a dead or late actor held, and hands the actor back or kills it at the end."""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from ..._errors import SerializationError, WorkerCrashedError, format_traceback, shorten
from ..._stages import STREAM_KINDS
from ..._transport import Cancelled, Daemon, StopStage
from .._base import (
    Chunk,
    Done,
    Failure,
    StageWork,
    Workers,
    dump_callable,
    failed,
    load_error,
    timeout_error,
)
from ._actor import Spec
from ._idle import IDLE, actor_key, kill_actor, make_actor

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
#: Seconds a `take` waits for outputs before it answers with none.
TAKE_S = 1.0


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
        self._token = secrets.token_hex(8)
        spec = Spec(
            work.name,
            work.kind,
            dump_callable(work.name, work.fn),
            work.options,
            work.ports,
            work.position,
            work.seed,
            logging.getLogger().getEffectiveLevel(),
            self._token,
        )
        self._spec = ray.put(spec)
        self._lock = threading.Lock()
        self._actors: dict[int, Any] = {}
        self._pids: dict[int, int] = {}  # slot -> its actor's process id (for log records)
        self._feeders: dict[int, Daemon] = {}  # a stream stage's, one per actor
        self._ready: dict[int, Any] = {}  # slot -> the answer to its actor's `job` call
        self._clean: set[int] = set()  # slots whose actor holds no call
        self._crash_times: deque[tuple[float, int]] = deque()
        self._crashes: dict[int, int] = {}  # item index -> times it killed its actor (or ran late)
        self.closing = False
        for slot in range(work.options.workers):
            self._new_actor(slot)
        work.on_cancel(self._cancelled)
        self._threads = [
            Daemon(self._drive, (slot,), f"headrace-{work.name}-ray-{slot}")
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
            kill_actor(self.ray, actor)

    def _give_back(self, slot: int) -> None:
        with self._lock:
            actor = self._actors.pop(slot, None)
        if actor is not None:
            IDLE.give(self.ray, actor, self._key, self._token)

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
        feeder = Daemon(self._feed, (slot, actor), f"headrace-{work.name}-ray-{slot}-feed")
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
                parts: deque[tuple[Sequence[int], list[Any]]] = deque([(keys, values)])
                while parts:
                    keys, values = parts.popleft()
                    try:
                        answer = self._wait(actor.put.remote(keys, values), None, slot)
                    except (_Died, Cancelled, StopStage):
                        raise
                    except Exception as exc:  # an item cannot travel: find it, item by item
                        if len(values) > 1:
                            items = zip(keys, values, strict=True)
                            parts.extendleft(reversed([([k], [v]) for k, v in items]))
                            continue
                        cause = exc.cause if isinstance(exc, _CallFailed) else exc
                        what = f"item {keys[0]} could not be sent to its actor"
                        error = _transit(work.name, what, cause, keys[0])
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
                thread.wait_end(deadline - time.monotonic())
        finally:
            self.closing = True
            self._kill_all()  # a thread still in a call (or a Ctrl-C here): its actor goes now
        with self._lock:
            threads = self._threads + list(self._feeders.values())
        for thread in threads:
            thread.wait_end(min(POLL_S * 4, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads if t is not threading.current_thread())


def _transit(
    stage: str, what: str, cause: BaseException, index: int | None = None
) -> SerializationError:
    """An item or output of ``stage`` that could not cross to or from its actor."""
    error = SerializationError(
        f"stage {stage!r}: {what}: {type(cause).__name__}: {shorten(str(cause), 300)}; values "
        "that cross to Ray actors must pickle (not locks, open files, sockets or generators)",
        stage=stage,
        index=index,
    )
    error.__cause__ = cause
    return error
