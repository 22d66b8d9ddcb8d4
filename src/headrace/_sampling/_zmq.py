"""Background streaming over ZeroMQ: a Streamer runs in its own process (Pescador's
``ZMQStreamer``).

Owns: `ZMQStreamer` and the background process's main function; the process itself is started,
watched and stopped by `_background.BackgroundProcess`, the pass API and the background loop are
`_background`'s too (shared with `ProcessStreamer`). Data flow of one pass::

    consumer (this process)                          background process (fresh interpreter)
    control pipe: the pass, then held open  ------>  reads the pass; exits when the pipe closes
    PULL socket, bound to ipc://<0700 dir>/s  <----  PUSH socket: [tag, header, raw buffers]
    poll(socket, status pipe)                 <----  status pipe: the exception, pickled, if
                                                     the streamer failed; EOF when it dies

Items cross the socket as a JSON header plus raw array bytes (`_wire`), authenticated with a
per-pass random key; pickle only with ``allow_pickle=True`` (RELIABILITY.md, Security). A
message that fails authentication (anyone who can reach the socket may send one) is dropped
and counted, never ends the pass; the socket refuses frames longer than the wire's largest
(``ZMQ_MAXMSGSIZE``). Over tcp a peer must also pass ZeroMQ's PLAIN handshake with a per-pass
random password that reaches the background process only through its private control pipe;
the consumer answers the handshake itself (ZAP), so a stranger cannot connect at all. The
consumer waits on the socket and the status pipe together, so a dead process is an error, never
a hang. The process is a fresh interpreter (``python -c``), as with the spawn start method but
without re-running the caller's main script, so scripts need no ``if __name__ == "__main__"``
guard (pescador's examples have none). ``pyzmq`` is imported only when a pass starts.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from typing import Any

from .. import _tempdirs
from .._errors import FrameError
from ._background import (
    JOIN_TIMEOUT,
    BackgroundProcess,
    BackgroundStreamer,
    pickled,
    produce,
    report,
    serve,
)
from ._streamer import as_streamer, check_positive
from ._wire import (
    END,
    ERROR,
    MAX_FRAME_BYTES,
    MAX_HEADER_BYTES,
    decode,
    encode,
    encode_end,
)

#: Messages each side's socket queues before the producer waits (ZeroMQ's high-water mark).
#: Up to about twice this many items wait in memory; 16 rides out a hiccup of either side.
PREFETCH = 16
#: After the process has died, milliseconds to keep reading items already on their way.
DRAIN_MS = 200
#: Where libzmq asks who may connect (ZAP, RFC 27); one per context, so one per pass.
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
#: ``ZMQ_MAXMSGSIZE`` of the consumer's socket: the wire's largest frame, plus a margin.
MAX_MESSAGE_BYTES = max(MAX_FRAME_BYTES, MAX_HEADER_BYTES) + 4096
TRANSPORTS = ("ipc", "tcp")
log = logging.getLogger("headrace")
STAGE = "ZMQStreamer"
_NO_ZMQ = 'ZMQStreamer needs pyzmq: pip install "headrace[zmq]"'


class ZMQStreamer(BackgroundStreamer):
    """Run a Streamer in a background process and receive its items over ZeroMQ.

    Each pass (each iteration) starts a process that iterates ``streamer`` and sends its
    items; the consumer receives them as they come, so producing overlaps with consuming.
    Items may be NumPy arrays (any dtype but object / structured), numbers, strings, bytes,
    and dicts / lists / tuples of them; arrays travel as raw bytes and arrive as read-only,
    aligned arrays (``copy=True``: writable copies). A streamer with a random state is sent as
    a re-seeded copy each pass, so passes differ, reproducibly.

    Parameters
    ----------
    streamer : Streamer or iterable
        What to run in the background (sent with cloudpickle, so lambdas work).
    prefetch : int
        Messages queued on each side before the producer waits.
    copy : bool
        Give writable copies of arrays instead of read-only views of the received messages.
    allow_pickle : bool
        Send other objects pickled. A pickled buffer is unpickled only after its digest is
        checked against the authenticated header.
    transport : {"ipc", "tcp"}
        ``ipc``: a socket file in a private (0700) temporary directory; ``tcp``: loopback only,
        and a connection needs a per-pass random password, so other local users cannot connect.

    Attributes
    ----------
    rejected : int
        Messages and tcp connections refused because they were not from the pass's background
        process, over all passes. They are dropped, logged, and never end a pass.
    timeout : float
        Seconds the process gets to exit after a pass before it is terminated.

    Examples
    --------
    >>> import headrace as hr, numpy as np
    >>> def batches(n):
    ...     for i in range(n):
    ...         yield {"X": np.full((2, 3), i), "i": i}
    >>> z = hr.ZMQStreamer(hr.Streamer(batches, 4))  # doctest: +SKIP
    >>> [b["i"] for b in z]  # doctest: +SKIP
    [0, 1, 2, 3]
    """

    def __init__(
        self,
        streamer: Any,
        *,
        prefetch: int = PREFETCH,
        copy: bool = False,
        allow_pickle: bool = False,
        transport: str = "ipc",
        timeout: float = JOIN_TIMEOUT,
    ) -> None:
        self.streamer = as_streamer(streamer)
        self.prefetch = check_positive(prefetch, "prefetch")
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
            raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        self.copy = bool(copy)
        self.allow_pickle = bool(allow_pickle)
        self.transport = transport
        self.timeout = float(timeout)
        self.rejected = 0

    def _run_pass(self, limit: int | None, cycle: bool) -> Iterator[Any]:
        try:
            import zmq  # noqa: F401  (fail here, in the caller, not in the background)
        except ImportError:
            raise ImportError(_NO_ZMQ) from None
        return self._background_pass(pickled(self.streamer._detached()), limit, cycle)

    def _background_pass(self, payload: bytes, limit: int | None, cycle: bool) -> Iterator[Any]:
        import cloudpickle
        import zmq

        key = secrets.token_bytes(32)
        context = zmq.Context()
        tmpdir: str | None = None
        background: BackgroundProcess | None = None
        zap: Any = None
        try:
            sock = context.socket(zmq.PULL)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, self.prefetch)
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
            password: bytes | None = None
            if self.transport == "tcp":
                # Who may connect is decided by our own ZAP handler, served in `_consume`.
                zap = context.socket(zmq.REP)
                zap.setsockopt(zmq.LINGER, 0)
                zap.bind(ZAP_ENDPOINT)
                password = secrets.token_hex(32).encode()
                sock.setsockopt(zmq.PLAIN_SERVER, 1)
                sock.setsockopt(zmq.ZAP_DOMAIN, b"headrace")
            if self.transport == "ipc":
                tmpdir = _tempdirs.make("zmq")  # mode 0700
                address = f"ipc://{os.path.join(tmpdir, 's')}"
                sock.bind(address)
            else:
                address = f"tcp://127.0.0.1:{sock.bind_to_random_port('tcp://127.0.0.1')}"
            background = BackgroundProcess(__name__, "background_main", STAGE, self.timeout)
            job = {
                "payload": payload,
                "address": address,
                "key": key,
                "limit": limit,
                "cycle": cycle,
                "prefetch": self.prefetch,
                "allow_pickle": self.allow_pickle,
                "password": password,
            }
            background.send_job(cloudpickle.dumps(job))
            yield from self._consume(zmq, sock, background, key, zap, password)
        finally:
            if background is not None:
                background.stop()  # the background process exits when its control pipe closes
            context.destroy(linger=0)
            if tmpdir is not None:
                shutil.rmtree(tmpdir, ignore_errors=True)

    def _consume(
        self,
        zmq: Any,
        sock: Any,
        background: BackgroundProcess,
        key: bytes,
        zap: Any,
        password: bytes | None,
    ) -> Iterator[Any]:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        status = background.status.fileno()
        poller.register(status, zmq.POLLIN)
        if zap is not None:
            poller.register(zap, zmq.POLLIN)
        error: bytes | None = None
        dead = False
        seq = 0
        while True:
            # Once the process is dead, wait only DRAIN_MS for items still on their way.
            ready = dict(poller.poll(DRAIN_MS if dead else None))
            if status in ready:
                poller.unregister(status)  # one message at most, then end of file
                error = background.read_status()
                dead = error is None
            if zap is not None and zap in ready:
                self._authenticate(zap, password)
            if sock in ready:
                frames = sock.recv_multipart(copy=False)
                try:
                    kind, item = decode(
                        frames, seq=seq, key=key, allow_pickle=self.allow_pickle, copy=self.copy
                    )
                except FrameError as exc:
                    if exc.authentic:
                        raise  # from our own background process: a bug, not a stranger
                    self._reject(f"a message ({exc})")
                    continue
                seq += 1
                if kind == END:
                    return
                if kind == ERROR:
                    blob = error if error is not None else background.read_status()
                    raise background.failure(blob, seq - 1)
                yield item
            elif dead:
                raise background.crashed(seq)

    def _authenticate(self, zap: Any, password: bytes | None) -> None:
        """Answer one ZAP request: only a peer that knows this pass's password may connect."""
        frames = zap.recv_multipart()
        version, request_id = [*frames, b"", b""][:2]
        mechanism, credentials = (frames[5], frames[6:]) if len(frames) >= 6 else (b"", [])
        ok = (
            password is not None
            and mechanism == b"PLAIN"
            and len(credentials) == 2
            and hmac.compare_digest(credentials[1], password)
        )
        status = (b"200", b"OK") if ok else (b"400", b"not this stream's background process")
        zap.send_multipart([version, request_id, *status, b"", b""])
        if not ok:
            self._reject("a tcp connection without this pass's password")

    def _reject(self, what: str) -> None:
        self.rejected += 1  # no lock: the streamer stays picklable; passes rarely overlap
        count = self.rejected
        if count & (count - 1) == 0:  # the 1st, 2nd, 4th, 8th...: a flood cannot flood the log
            log.warning(
                "ZMQStreamer refused %s that was not from its background process; %d refused "
                "so far. Another process is writing to its socket.",
                what,
                count,
            )


def background_main(control_fd: int, status_fd: int) -> None:
    """Read the pass from the control pipe, iterate the streamer and send its items."""
    job, status = serve(control_fd, status_fd)
    import cloudpickle
    import zmq

    context = zmq.Context()
    sock = context.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, job["prefetch"])
    if job["password"] is not None:
        sock.setsockopt(zmq.PLAIN_USERNAME, b"headrace")
        sock.setsockopt(zmq.PLAIN_PASSWORD, job["password"])
    sock.connect(job["address"])
    key, seq = job["key"], 0
    try:
        streamer = cloudpickle.loads(job["payload"])
        for item in produce(streamer, job["limit"], job["cycle"], STAGE):
            sock.send_multipart(encode(item, seq=seq, key=key, allow_pickle=job["allow_pickle"]))
            seq += 1
        sock.send_multipart(encode_end(seq=seq, key=key))
    except Exception as exc:
        report(status, exc)
        sock.send_multipart(encode_end(seq=seq, key=key, kind=ERROR))
    threading.Event().wait()  # until the consumer closes the control pipe (see `serve`)
