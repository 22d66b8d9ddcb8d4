"""The ZeroMQ wire format: round trips, and malformed or hostile messages refused without
unpickling (RELIABILITY.md, Security). Pure Python: needs no pyzmq."""

from __future__ import annotations

import hashlib
import json
import pickle

import numpy as np
import pytest

import headrace as hr
from headrace._sampling._wire import (
    END,
    ERROR,
    ITEM,
    MAX_HEADER_BYTES,
    decode,
    encode,
    encode_end,
    tag_of,
)

KEY = b"k" * 32


def roundtrip(item, *, allow_pickle=False, copy=False):
    frames = [
        bytes(memoryview(f).cast("B"))
        for f in encode(item, seq=0, key=KEY, allow_pickle=allow_pickle)
    ]
    kind, got = decode(frames, seq=0, key=KEY, allow_pickle=allow_pickle, copy=copy)
    assert kind == ITEM
    return got


def forged(head: dict, buffers=(), key=KEY) -> list[bytes]:
    header = json.dumps(head).encode()
    return [tag_of(key, header), header, *buffers]


ARRAYS = [
    np.arange(12, dtype="<f8").reshape(3, 4),
    np.arange(6, dtype=">i4").reshape(2, 3),  # big-endian
    np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    np.arange(20)[::3],  # not contiguous
    np.zeros((0, 5), dtype=np.float32),  # empty
    np.array(3.5),  # 0-d
    np.array([True, False]),
    np.array([1 + 2j], dtype=np.complex64),
    np.array(["ab", "c"]),
    np.array([b"xy"]),
    np.array(["2024-01-01"], dtype="datetime64[ns]"),
    np.arange(4, dtype=np.float16),
]


@pytest.mark.parametrize("arr", ARRAYS, ids=lambda a: f"{a.dtype.str}{a.shape}")
def test_arrays_round_trip(arr: np.ndarray) -> None:
    got = roundtrip({"a": arr})["a"]
    assert got.dtype == arr.dtype and got.shape == arr.shape
    np.testing.assert_array_equal(got, arr)
    assert got.flags.aligned


def test_structures_and_scalars_round_trip() -> None:
    item = {
        "x": [1, 2.5, "s", None, True, b"raw"],
        "t": (np.float32(1.5), np.int64(7)),
        1: {"nested": [np.ones(2)]},
        "nan": float("nan"),
        "inf": float("-inf"),
    }
    got = roundtrip(item)
    assert got["x"] == [1, 2.5, "s", None, True, b"raw"]
    assert isinstance(got["t"], tuple) and type(got["t"][0]) is np.float32
    assert got["t"][1] == 7 and type(got["t"][1]) is np.int64
    np.testing.assert_array_equal(got[1]["nested"][0], np.ones(2))
    assert np.isnan(got["nan"]) and got["inf"] == float("-inf")


def test_copy_gives_writable_arrays() -> None:
    assert roundtrip(np.ones(3), copy=True).flags.writeable


def test_objects_need_allow_pickle() -> None:
    with pytest.raises(TypeError, match="allow_pickle=True"):
        encode({"o": object()}, seq=0, key=KEY, allow_pickle=False)
    with pytest.raises(TypeError, match="dtype object"):
        encode(np.array([object()]), seq=0, key=KEY, allow_pickle=False)
    assert roundtrip({"s": {1, 2}}, allow_pickle=True) == {"s": {1, 2}}


def test_end_and_error_messages() -> None:
    assert decode(encode_end(seq=4, key=KEY), seq=4, key=KEY) == (END, None)
    assert decode(encode_end(seq=0, key=KEY, kind=ERROR), seq=0, key=KEY) == (ERROR, None)


# --- refused --------------------------------------------------------------------------------


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("pickle.loads was called on a frame")

    monkeypatch.setattr(pickle, "loads", refuse)


def item_head(buffers, tree, seq=0):
    return {"v": 1, "seq": seq, "kind": "item", "tree": tree, "buffers": buffers}


def array_meta(dtype="<f8", shape=(2,), order="C"):
    return {"type": "array", "dtype": dtype, "shape": list(shape), "order": order}


@pytest.mark.usefixtures("no_unpickling")
@pytest.mark.parametrize(
    ("frames", "match"),
    [
        ([b"tag"], "needs a tag and a header"),
        ([b"x" * 32, b"{}"], "not authentic"),
        (forged(item_head([array_meta(shape=(3,))], ["a", 0]), [b"\0" * 16]), "holds 16 bytes"),
        (forged(item_head([array_meta(shape=(2,))], ["a", 0]), [b"\0" * 17]), "holds 17 bytes"),
        (forged(item_head([array_meta(dtype="|O")], ["a", 0]), [b"\0" * 16]), "not allowed"),
        (forged(item_head([array_meta(dtype="|V8")], ["a", 0]), [b"\0" * 16]), "not allowed"),
        (forged(item_head([array_meta(dtype="<f8,<i4")], ["a", 0]), [b"\0" * 16]), "not allowed"),
        (forged(item_head([array_meta(shape=(-2,))], ["a", 0]), [b""]), "non-negative"),
        (forged(item_head([array_meta(shape=(2**40, 2**40))], ["a", 0]), [b""]), "holds 0 bytes"),
        (forged(item_head([array_meta(order="X")], ["a", 0]), [b"\0" * 16]), "order"),
        (
            forged(item_head([array_meta()], ["a", 0])),
            "describes 1 buffers in 1 frames but the message has 0",
        ),
        (forged(item_head([array_meta()], ["a", 3]), [b"\0" * 16]), "out of range"),
        (forged(item_head([{"type": "bytes"}], ["a", 0]), [b"\0" * 16]), "not of type 'array'"),
        (forged(item_head([], ["q", 0])), "unknown item code"),
        (forged(item_head([], ["v", [1, 2]])), "malformed scalar"),
        (forged(item_head([], ["v", 1], seq=5)), "arrived where 0 was expected"),
        (forged({"v": 2, "seq": 0, "kind": "item"}), "of this version"),
        (forged({"v": 1, "seq": 0, "kind": "exec"}), "unknown message kind"),
        (forged({"v": 1, "seq": 0, "kind": "end"}, [b"x"]), "carries no buffers"),
        ([tag_of(KEY, b"{ not json"), b"{ not json"], "not valid JSON"),
        (forged([1, 2]), "not a headrace wire header"),
    ],
)
def test_malformed_messages_are_refused(frames, match: str) -> None:
    with pytest.raises(hr.FrameError, match=match):
        decode(frames, seq=0, key=KEY)


@pytest.mark.usefixtures("no_unpickling")
def test_deep_nesting_is_refused() -> None:
    tree: list = ["v", 1]
    for _ in range(100):
        tree = ["l", [tree]]
    with pytest.raises(hr.FrameError, match="nested deeper"):
        decode(forged(item_head([], tree)), seq=0, key=KEY)
    header = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(hr.FrameError, match="not valid JSON"):
        decode([tag_of(KEY, header), header], seq=0, key=KEY)


@pytest.mark.usefixtures("no_unpickling")
def test_pickled_data_is_refused_unread_without_allow_pickle() -> None:
    blob = b"cos\nsystem\n(S'echo pwned'\ntR."  # a classic malicious pickle
    meta = {"type": "pickle", "sha256": hashlib.sha256(blob).hexdigest()}
    frames = forged(item_head([meta], ["p", 0]), [blob])
    with pytest.raises(hr.FrameError, match="allow_pickle is False"):
        decode(frames, seq=0, key=KEY)


def test_a_pickled_buffer_must_match_its_authenticated_digest() -> None:
    good = pickle.dumps([1, 2])
    meta = {"type": "pickle", "sha256": hashlib.sha256(good).hexdigest()}
    frames = forged(item_head([meta], ["p", 0]), [pickle.dumps("swapped")])
    with pytest.raises(hr.FrameError, match="does not match"):
        decode(frames, seq=0, key=KEY, allow_pickle=True)
    frames = forged(item_head([meta], ["p", 0]), [good])
    assert decode(frames, seq=0, key=KEY, allow_pickle=True) == (ITEM, [1, 2])


def test_a_message_signed_with_another_key_is_refused() -> None:
    frames = encode({"x": 1}, seq=0, key=b"other" * 8, allow_pickle=False)
    with pytest.raises(hr.FrameError, match="not authentic"):
        decode([bytes(f) for f in frames], seq=0, key=KEY)


def test_an_oversized_header_is_refused_before_parsing() -> None:
    header = b" " * (MAX_HEADER_BYTES + 1)
    with pytest.raises(hr.FrameError, match="exceeds"):
        decode([tag_of(KEY, header), header], seq=0, key=KEY)


def test_frame_error_is_a_headrace_error_and_a_value_error() -> None:
    assert issubclass(hr.FrameError, hr.HeadraceError)
    assert issubclass(hr.FrameError, ValueError)
