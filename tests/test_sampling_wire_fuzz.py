"""Fuzzing the ZeroMQ wire decoder (issue 15): whatever bytes arrive, `decode` returns an item
or raises `FrameError`, nothing else, and allocates in proportion to the bytes it was given,
never to the sizes a header claims.

Three sources of messages: arbitrary frames (they fail authentication); arbitrary headers signed
with the right key (as if the stream's own writer were broken, which reaches the parser); and
valid messages with one mutation (a byte flipped and re-signed, a buffer cut or grown, a frame
dropped or repeated, a JSON value swapped). Pure Python: needs no pyzmq.
"""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import headrace as hr
from headrace._sampling._wire import ITEM, decode, encode, tag_of

KEY = b"k" * 32
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
#: Allocation allowed beyond the frames: the parsed JSON header is a tree of Python objects, a
#: few dozen times its text at worst (``[[],[],...]``); plus a fixed allowance for the decoder.
HEADER_FACTOR = 64
SLACK = 256 * 1024

#: Dimensions at NumPy's limits: with a 0 beside them the claimed size is 0 bytes.
EDGE_DIMS = [0, 2**31, 2**62, 2**63, 2**64, 2**70]
#: Item structures that refer to buffers, so that the buffer metadata is read.
TREES = st.sampled_from(
    [
        ["a", 0],
        ["s", 0],
        ["b", 0],
        ["p", 0],
        ["a", 1],
        ["l", [["a", 0], ["s", 1]]],
        ["d", [[1, ["a", 0]]]],
    ]
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(["v", "a", "s", "b", "p", "d", "l", "t", "f", "array", "item", "<f8", "C"]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)

arrays = st.sampled_from(
    [
        np.arange(12, dtype="<f8").reshape(3, 4),
        np.zeros((0, 3), dtype=np.int16),
        np.array(2.5),
        np.asfortranarray(np.ones((2, 3), dtype=">i4")),
        np.array(["ab", "c"]),
    ]
)
items = st.recursive(
    st.none() | st.integers(-5, 5) | st.text(max_size=5) | st.binary(max_size=8) | arrays,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


def signed(head: object) -> list[bytes]:
    header = json.dumps(head).encode()
    return [tag_of(KEY, header), header]


def frames_of(item: object) -> list[bytes]:
    return [
        bytes(memoryview(f).cast("B")) for f in encode(item, seq=0, key=KEY, allow_pickle=False)
    ]


def decode_checked(frames: list[bytes], *, copy: bool = False) -> None:
    """Decode; only FrameError may escape, and allocation stays within the frames' size."""
    received = sum(len(f) for f in frames)
    tracemalloc.start()
    try:
        try:
            kind, _item = decode(frames, seq=0, key=KEY, copy=copy)
        except hr.FrameError:
            pass
        else:
            assert kind in (ITEM, "end", "error")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    header = len(frames[1]) if len(frames) > 1 else 0
    assert peak <= HEADER_FACTOR * header + 2 * received + SLACK, (peak, received)


@FUZZ
@given(st.lists(st.binary(max_size=200), max_size=6))
def test_arbitrary_frames(frames: list[bytes]) -> None:
    decode_checked(frames)


@FUZZ
@given(json_values, st.lists(st.binary(max_size=64), max_size=4))
def test_arbitrary_signed_headers(head: object, buffers: list[bytes]) -> None:
    decode_checked([*signed(head), *buffers])


#: Buffer descriptions close to valid ones, each field sometimes wrong.
buffer_metas = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["array", "array", "bytes", "pickle"]),
        "dtype": st.sampled_from(["<f8", "|u1", "<U2", "|O", "<f8,<i4", 3]),
        "shape": st.lists(st.integers(-1, 4) | st.sampled_from(EDGE_DIMS), max_size=4),
        "order": st.sampled_from(["C", "F", "X"]),
    },
    optional={"frames": st.integers(-1, 3), "sha256": st.text(max_size=4)},
)
buffer_frames = st.sampled_from([b"", b"\0" * 8, b"\0" * 64]) | st.binary(max_size=64)


@FUZZ
@given(
    TREES | json_values,
    st.lists(buffer_metas | json_values, max_size=3),
    st.lists(buffer_frames, max_size=4),
)
def test_signed_headers_shaped_like_items(tree: object, metas: list, buffers: list[bytes]) -> None:
    head = {"v": 1, "seq": 0, "kind": "item", "tree": tree, "buffers": metas}
    decode_checked([*signed(head), *buffers])


@FUZZ
@given(st.lists(buffer_metas, min_size=1, max_size=2), st.data())
def test_array_descriptions_with_matching_frames(metas: list, data: st.DataObject) -> None:
    """One frame per buffer and a tree that reads them all: each description is checked."""
    tree = ["l", [[data.draw(st.sampled_from(["a", "s"])), i] for i in range(len(metas))]]
    buffers = [data.draw(buffer_frames) for _ in metas]
    for meta in metas:
        meta.pop("frames", None)
    head = {"v": 1, "seq": 0, "kind": "item", "tree": tree, "buffers": metas}
    decode_checked([*signed(head), *buffers], copy=data.draw(st.booleans()))


@FUZZ
@given(items, st.data())
def test_valid_messages_with_one_mutation(item: object, data: st.DataObject) -> None:
    frames = frames_of(item)
    how = data.draw(st.sampled_from(["flip", "cut", "grow", "drop", "repeat", "swap", "resign"]))
    i = data.draw(st.integers(0, len(frames) - 1))
    if how == "flip" and frames[i]:
        j = data.draw(st.integers(0, len(frames[i]) - 1))
        mutated = bytearray(frames[i])
        mutated[j] ^= 1 << data.draw(st.integers(0, 7))
        frames[i] = bytes(mutated)
        if i == 1:
            frames[0] = tag_of(KEY, frames[1])  # re-signed: reaches the parser
    elif how == "cut":
        frames[i] = frames[i][: data.draw(st.integers(0, max(0, len(frames[i]) - 1)))]
    elif how == "grow":
        frames[i] += data.draw(st.binary(min_size=1, max_size=16))
    elif how == "drop":
        del frames[i]
    elif how == "repeat":
        frames.insert(i, frames[i])
    elif how in ("swap", "resign"):
        head = json.loads(frames[1])
        if how == "swap":
            head[data.draw(st.sampled_from(["tree", "buffers", "seq", "kind", "v"]))] = data.draw(
                json_values
            )
        frames[:2] = signed(head)
    decode_checked(frames, copy=data.draw(st.booleans()))


def test_a_claimed_shape_never_allocates() -> None:
    """A header may claim 2**40 elements; the decoder checks the bytes it has, first."""
    meta = {"type": "array", "dtype": "<f8", "shape": [2**20, 2**20], "order": "C"}
    head = {"v": 1, "seq": 0, "kind": "item", "tree": ["a", 0], "buffers": [meta]}
    decode_checked([*signed(head), b"\0" * 64], copy=True)
    meta["frames"] = 2
    decode_checked([*signed(head), b"\0" * 64, b"\0" * 64], copy=True)
    for shape in ([0, 2**62], [0, 2**63], [2**62, 0, 2**62]):  # 0 bytes, beyond NumPy
        meta = {"type": "array", "dtype": "<f8", "shape": shape, "order": "F"}
        head["buffers"] = [meta]
        decode_checked([*signed(head), b""], copy=True)
