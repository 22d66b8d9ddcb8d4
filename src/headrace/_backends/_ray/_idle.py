"""Making the actors of a stage, and the actors kept idle for later runs (`IDLE`)."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from ._actor import IDLE_S, StageActor

#: An actor idle for longer than IDLE_S - IDLE_MARGIN_S is not reused: it may be exiting.
IDLE_MARGIN_S = 5.0
#: Idle actors kept at most (more are ended when given back).
MAX_IDLE = 4 * (os.cpu_count() or 1)

#: Threads of a stream stage's actor: a `put` waiting for room, a `take` waiting for outputs,
#: and one for `job` / `end_job`. A call stage's actor runs one call at a time (in order).
STREAM_CONCURRENCY = 3
_actor_class: Any = None


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
            kill_actor(ray, actor)
        return make_actor(ray, key)

    def give(self, ray: Any, actor: Any, key: tuple[Any, ...], token: str) -> None:
        """Keep ``actor`` (made alike ``key``), ending the job of run ``token`` on it."""
        with contextlib.suppress(Exception):
            actor.end_job.remote(token)
        with self._lock:
            if len(self._actors) < MAX_IDLE:
                self._actors.append((actor, time.monotonic(), key))
                return
        kill_actor(ray, actor)

    def release(self) -> None:
        """Kill every idle actor (`RayEngine.shutdown`, and the tests between two tests)."""
        with self._lock:
            actors, self._actors = self._actors, []
        ray = sys.modules.get("ray")
        if ray is not None and actors and ray.is_initialized():
            for actor, _, _ in actors:
                kill_actor(ray, actor)


def kill_actor(ray: Any, actor: Any) -> None:
    with contextlib.suppress(Exception):
        ray.kill(actor, no_restart=True)


#: The idle actors of this program (one Ray connection per program).
IDLE = IdleActors()


def release_idle() -> None:
    """End the actors kept idle for later runs."""
    IDLE.release()
