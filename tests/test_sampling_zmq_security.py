"""hr.ZMQStreamer against a stranger on the same machine (issue 15, finding 3).

Each test does what the reproduction does: another process connects to the socket of a running
pass and sends a forged message, or one huge frame. The pass must go on with every item in
order; a forged message that reaches the consumer is dropped and counted; a huge frame is
refused by the socket (``ZMQ_MAXMSGSIZE``) before it is held in memory; over tcp the stranger
cannot even complete the handshake (it lacks the pass's password). The stranger runs in its
own interpreter, so the consumer's memory is measured alone.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import headrace as hr

zmq = pytest.importorskip("zmq")

#: Seconds the stranger gets to connect, send and see its connection end.
STRANGER_S = 20.0

STRANGER = r"""
import json, sys, zmq, zmq.utils.monitor
address, big, password = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = zmq.Context()
s = ctx.socket(zmq.PUSH)
if password:
    s.setsockopt(zmq.PLAIN_USERNAME, b"headrace")
    s.setsockopt(zmq.PLAIN_PASSWORD, password.encode())
s.setsockopt(zmq.LINGER, 0)
s.setsockopt(zmq.SNDTIMEO, 10_000)
mon = s.get_monitor_socket()
s.connect(address)
def send(frames):
    try:  # a refused connection never takes the message: do not wait for it
        s.send_multipart(frames)
    except zmq.Again:
        pass
if big:
    send([b"x" * 32, b"{}", zmq.Frame(bytearray(big))])
else:
    send([b"x" * 32, b'{"v":1}'])
    send([b"x" * 32, b'{"v":1,"seq":1,"kind":"end"}'])
    send([b"only one frame"])
seen = []
ENDS = {zmq.EVENT_DISCONNECTED, zmq.EVENT_CLOSED}
ENDS |= {getattr(zmq, n) for n in dir(zmq) if n.startswith("EVENT_HANDSHAKE_FAILED")}
poller = zmq.Poller(); poller.register(mon, zmq.POLLIN)
while poller.poll(15_000):
    event = zmq.utils.monitor.recv_monitor_message(mon)["event"]
    seen.append(str(zmq.Event(event).name))
    if big and event in ENDS:
        break
    if not big and event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
        break  # the messages go out once the handshake is done
    if not big and event in ENDS:
        break
print(json.dumps(seen))
s.close(); mon.close(); ctx.term()
"""


def endless():
    for i in itertools.count():
        yield {"i": i, "X": np.full(4, i)}


def start_stranger(address: str, big: int = 0, password: str = "") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", STRANGER, address, str(big), password],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def events_of(proc: subprocess.Popen[str]) -> list[str]:
    out, err = proc.communicate(timeout=STRANGER_S)
    assert proc.returncode == 0, err
    return list(json.loads(out))


def stranger(address: str, big: int = 0) -> list[str]:
    """Run the stranger against ``address``; the socket events it saw."""
    return events_of(start_stranger(address, big))


def ipc_address() -> str:
    tmp = tempfile.gettempdir()
    (where,) = [d for d in os.listdir(tmp) if d.startswith(f"headrace-{os.getpid()}-zmq-")]
    return f"ipc://{os.path.join(tmp, where, 's')}"


def tcp_address() -> str:
    """The loopback port this process listens on (the pass's socket), read from /proc."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    ports = [int(r[1].split(":")[1], 16) for r in rows if r[3] == "0A" and r[9] in inodes]
    (port,) = ports
    return f"tcp://127.0.0.1:{port}"


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def take(it, n: int) -> list[int]:
    return [next(it)["i"] for _ in range(n)]


def test_forged_messages_are_dropped_and_counted_and_the_pass_goes_on() -> None:
    z = hr.ZMQStreamer(hr.Streamer(endless), prefetch=1)
    it = iter(z)
    try:
        got = take(it, 1)
        stranger(ipc_address())
        for _ in range(10_000):  # bounded: the forged messages are queued behind a few items
            got += take(it, 1)
            if z.rejected == 3:
                break
        got += take(it, 5)
        assert z.rejected == 3
        assert got == list(range(len(got)))  # nothing lost, nothing repeated, in order
    finally:
        it.close()


def test_a_huge_frame_is_refused_by_the_socket_before_it_is_held() -> None:
    big = 200 * 2**20
    z = hr.ZMQStreamer(hr.Streamer(endless), prefetch=1)
    it = iter(z)
    try:
        got = take(it, 1)
        before = resident_bytes()
        events = stranger(ipc_address(), big)
        assert "DISCONNECTED" in events  # the consumer's socket dropped the connection
        got += take(it, 20)
        assert resident_bytes() - before < big // 4
        assert got == list(range(len(got)))
        assert z.rejected == 0  # refused by ZeroMQ itself, never delivered
    finally:
        it.close()


@pytest.mark.parametrize("big", [0, 200 * 2**20], ids=["forged", "huge"])
def test_over_tcp_a_stranger_cannot_connect(big: int) -> None:
    z = hr.ZMQStreamer(hr.Streamer(endless), prefetch=1, transport="tcp")
    it = iter(z)
    try:
        got = take(it, 1)
        before = resident_bytes()
        events = stranger(tcp_address(), big)
        assert "HANDSHAKE_SUCCEEDED" not in events
        assert any(e.startswith("HANDSHAKE_FAILED") or e == "DISCONNECTED" for e in events)
        got += take(it, 20)
        assert resident_bytes() - before < 50 * 2**20
        assert got == list(range(len(got)))
        assert z.rejected == 0  # nothing of the stranger's reached the consumer
    finally:
        it.close()


def test_over_tcp_a_wrong_password_is_refused_and_counted() -> None:
    """The consumer answers the handshake (ZAP) while it waits for items: keep reading."""
    z = hr.ZMQStreamer(hr.Streamer(endless), prefetch=1, transport="tcp")
    it = iter(z)
    try:
        got = take(it, 1)
        proc = start_stranger(tcp_address(), 0, "guessed")
        for _ in range(100_000):  # bounded: until the stranger has seen its handshake end
            got += take(it, 1)
            if proc.poll() is not None:
                break
        events = events_of(proc)
        assert "HANDSHAKE_SUCCEEDED" not in events
        assert "HANDSHAKE_FAILED_AUTH" in events
        got += take(it, 5)
        assert z.rejected >= 1  # the stranger may retry before it gives up
        assert got == list(range(len(got)))
    finally:
        it.close()


def test_arrays_larger_than_a_frame_cross_whole() -> None:
    """Cut into frames the socket accepts (the same on ipc: the wire does the cutting)."""
    from headrace._sampling._wire import MAX_FRAME_BYTES

    n = (MAX_FRAME_BYTES * 2 + 24) // 8  # three frames, the last one short
    item = {"a": np.arange(n, dtype=np.float64)}
    out = list(hr.ZMQStreamer(hr.Streamer([item]), transport="tcp"))
    (item,) = out
    assert item["a"].shape == (n,) and item["a"][-1] == n - 1 and item["a"][12345] == 12345
