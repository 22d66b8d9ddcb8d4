"""The Ray engine: a process stage's workers are Ray actors (``engine=RayEngine(...)``).

    driver (one thread per actor; a feeder too for a stream stage)   actor (a Ray worker process)
    -------------------------------------------------------------   ----------------------------
    call stage:   next_chunk() -> actor.run.remote(chunk) ------->   Caller.run(chunk): the shared
                  ray.wait(head, deadline); finish(Done) <-------      worker body (retries, rng)
    stream stage: stream_chunks() -> actor.put.remote(chunk) ---->   run_stream() in a thread of
                  actor.take.remote() -> emit(outputs) <---------      the actor (`ActorStream`)
    every answer carries the actor's log records: handled by the driver's handlers

A call stage's actor that dies has its chunks go again on a fresh actor, the one it ran item by
item (so that the item at fault is known: it is retried or fails as WorkerCrashedError); a
timed item past its deadline is a ray.kill, a StageTimeoutError, a fresh actor. A stream
stage's actor that dies fails the run (its function's state is gone), as a worker process does.
One Ray call per chunk (the runner sizes chunks by time). Actors that end a run holding no
call wait in `IDLE` for the next run's stage; the others are killed when the run closes.
Arrays in items and results travel through Ray's object store (numpy arrays read back
zero-copy). ``RayEngine(actor_options=...)`` gives a stage's actors Ray resources.

Modules: `_driver` (the driver's threads), `_actor` (what runs in an actor), `_idle` (making
actors, and those kept for later runs), `_options` (per-stage resources).
Ray is imported only in this package, and only when a run uses the engine: ``import
headrace`` never imports it.
"""

from __future__ import annotations

import atexit
import importlib.util
import threading
from collections.abc import Mapping
from typing import Any

from ..._stages import StageOptions
from .._base import Backend, StageWork, Workers
from ._driver import CHUNK_S, DEPTH, WINDOW_BYTES, RayWorkers
from ._idle import IDLE, release_idle
from ._options import check_actor_options, check_placeable, check_stage_names

__all__ = ["IDLE", "RayBackend", "RayEngine", "import_ray", "release_idle"]

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
        backends["process"] = RayBackend(self)
        return backends


class RayBackend(Backend):
    """Process stages, call and stream stages alike, on Ray actors (one per worker)."""

    name = "process"
    chunk_s = CHUNK_S

    def __init__(self, engine: RayEngine) -> None:
        self.engine = engine
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
