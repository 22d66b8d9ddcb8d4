"""The wire format of background streaming: an item as a small header plus raw array bytes.

Owns: `encode` / `decode` of one item into ZeroMQ frames and the dtype allowlist; a bad message
raises `FrameError` (from `_errors`). A message is ``[tag, header, buffer, ...]``: the header
is JSON (the item's structure, and for each array its dtype, shape and order), the tag its
HMAC-SHA256 under a per-run random key, and each buffer the raw bytes of one array (or one
bytes object), cut into frames of at most `MAX_FRAME_BYTES` so that a reader can bound every
frame it accepts (``ZMQ_MAXMSGSIZE``). Nothing is unpickled unless the reader allows pickle,
and then only a buffer whose SHA-256 the authenticated header names. Imports only the core's
`_errors`.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import math
import pickle
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._errors import FrameError

VERSION = 1
ITEM, END, ERROR = "item", "end", "error"
#: The largest header accepted. An item's structure is small; a 1 MiB header means a
#: corrupt or hostile frame, not data.
MAX_HEADER_BYTES = 2**20
#: The largest frame a writer sends: a longer buffer is cut into several frames (and joined,
#: with one copy, by the reader). 64 MiB keeps that copy rare (arrays of 8M float64) and
#: cheap next to moving the bytes through a socket; the reader refuses anything larger.
MAX_FRAME_BYTES = 64 * 2**20
#: Deepest nesting of dicts / lists / tuples in an item (deeper is refused, on both sides).
MAX_DEPTH = 32
#: Most dimensions of an array (NumPy's own limit is 64).
MAX_NDIM = 64
#: dtypes that may cross the wire: booleans, integers, floats, complex, fixed-width bytes and
#: text, datetimes. No objects, no structured or void types.
ALLOWED_KINDS = frozenset("biufcSUmM")
_DTYPE = re.compile(r"^[<>|=]([biufc][1-9][0-9]?|[SU][1-9][0-9]{0,8}|[mM]8(\[[0-9]*[a-zA-Z]+\])?)$")
_SCALARS = (type(None), bool, int, float, str)


def allowed_dtype(text: object) -> np.dtype[Any]:
    """The dtype named by ``text`` if it is on the allowlist, else `FrameError`."""
    if not isinstance(text, str) or not _DTYPE.match(text):
        raise FrameError(f"dtype {text!r:.60} is not allowed on the wire")
    try:
        dtype = np.dtype(text)
    except TypeError as exc:
        raise FrameError(f"dtype {text!r} is not a valid dtype") from exc
    if dtype.kind not in ALLOWED_KINDS or dtype.hasobject or dtype.itemsize == 0:
        raise FrameError(f"dtype {text!r} is not allowed on the wire")
    return dtype


def tag_of(key: bytes, header: bytes) -> bytes:
    return hmac.new(key, header, hashlib.sha256).digest()


# --- encoding (the background process) ------------------------------------------------------


class _Encoder:
    def __init__(self, allow_pickle: bool) -> None:
        self.allow_pickle = allow_pickle
        self.meta: list[dict[str, Any]] = []
        self.buffers: list[Any] = []

    def add(self, meta: dict[str, Any], buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if view.nbytes > MAX_FRAME_BYTES:
            parts = range(0, view.nbytes, MAX_FRAME_BYTES)
            meta["frames"] = len(parts)
            self.buffers.extend(view[i : i + MAX_FRAME_BYTES] for i in parts)
        else:
            self.buffers.append(buffer)
        self.meta.append(meta)
        return len(self.meta) - 1

    def array(self, arr: np.ndarray, scalar: bool) -> list[Any]:
        if arr.dtype.kind not in ALLOWED_KINDS or arr.dtype.hasobject:
            return self.pickled(arr, f"an array of dtype {arr.dtype}")
        if arr.flags.c_contiguous:
            order, data = "C", arr
        elif arr.flags.f_contiguous:
            order, data = "F", arr.T
        else:
            order, data = "C", np.ascontiguousarray(arr)
        meta = {"type": "array", "dtype": arr.dtype.str, "shape": list(arr.shape), "order": order}
        # As bytes: datetimes export no buffer, and an empty array's buffer has no shape.
        return ["s" if scalar else "a", self.add(meta, data.reshape(-1).view(np.uint8))]

    def pickled(self, obj: Any, what: str) -> list[Any]:
        if not self.allow_pickle:
            raise TypeError(
                f"cannot send {what} from the background process without pickle: send arrays, "
                "numbers, strings, bytes and dicts / lists / tuples of them, or pass "
                "allow_pickle=True"
            )
        blob = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        sha = hashlib.sha256(blob).hexdigest()
        return ["p", self.add({"type": "pickle", "sha256": sha}, blob)]

    def tree(self, obj: Any, depth: int = 0) -> list[Any]:
        if depth > MAX_DEPTH:
            raise ValueError(f"item nested deeper than {MAX_DEPTH} levels")
        if isinstance(obj, np.ndarray):
            return self.array(obj, scalar=False)
        if isinstance(obj, np.generic):
            return self.array(np.asarray(obj), scalar=True)
        if isinstance(obj, _SCALARS):
            if isinstance(obj, float) and not math.isfinite(obj):
                return ["f", repr(obj)]
            return ["v", obj]
        if isinstance(obj, bytes | bytearray):
            return ["b", self.add({"type": "bytes"}, bytes(obj))]
        if type(obj) is dict and all(isinstance(k, _SCALARS) for k in obj):
            return ["d", [[k, self.tree(v, depth + 1)] for k, v in obj.items()]]
        if type(obj) is list:
            return ["l", [self.tree(v, depth + 1) for v in obj]]
        if type(obj) is tuple:
            return ["t", [self.tree(v, depth + 1) for v in obj]]
        return self.pickled(obj, f"a value of type {type(obj).__name__}")


def _message(key: bytes, head: dict[str, Any], buffers: Sequence[Any]) -> list[Any]:
    header = json.dumps(head, separators=(",", ":")).encode()
    return [tag_of(key, header), header, *buffers]


def encode(item: Any, *, seq: int, key: bytes, allow_pickle: bool) -> list[Any]:
    """The frames of one item: ``[tag, header, buffer, ...]``."""
    enc = _Encoder(allow_pickle)
    tree = enc.tree(item)
    head = {"v": VERSION, "seq": seq, "kind": ITEM, "tree": tree, "buffers": enc.meta}
    return _message(key, head, enc.buffers)


def encode_end(*, seq: int, key: bytes, kind: str = END) -> list[Any]:
    """The frames saying the stream ended (``END``) or failed (``ERROR``)."""
    return _message(key, {"v": VERSION, "seq": seq, "kind": kind}, [])


# --- decoding (the consumer) ------------------------------------------------------------------


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FrameError(f"{what} must be a non-negative integer, got {value!r:.60}")
    return value


def _array(meta: dict[str, Any], frame: Any, copy: bool) -> np.ndarray:
    dtype = allowed_dtype(meta.get("dtype"))
    shape = meta.get("shape")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM:
        raise FrameError(f"array shape must be a list of at most {MAX_NDIM} sizes")
    dims = [_int(d, "an array dimension") for d in shape]
    order = meta.get("order")
    if order not in ("C", "F"):
        raise FrameError(f"array order must be 'C' or 'F', got {order!r:.20}")
    size = math.prod(dims) * dtype.itemsize
    buffer = memoryview(frame.buffer if hasattr(frame, "buffer") else frame).cast("B")
    if buffer.nbytes != size:
        raise FrameError(
            f"the header says {dtype} {tuple(dims)} ({size} bytes) but the frame holds "
            f"{buffer.nbytes} bytes"
        )
    flat = np.frombuffer(buffer, dtype=dtype) if size else np.empty(0, dtype)
    try:  # an empty array may still claim dimensions NumPy cannot represent
        arr = flat.reshape(dims) if order == "C" else flat.reshape(dims[::-1]).T
    except ValueError as exc:
        raise FrameError(f"array shape {tuple(dims)} is not valid: {exc}") from None
    if copy or not arr.flags.aligned:
        arr = np.array(arr, order="K")  # aligned and writable
    return arr


def _frame_counts(metas: Any, frames: int) -> list[int]:
    """How many frames each buffer of the header spans (the frames must add up)."""
    if not isinstance(metas, list):
        raise FrameError("the header's buffer list is malformed")
    counts = [
        _int(m.get("frames", 1), "a frame count") if isinstance(m, dict) else 1 for m in metas
    ]
    if any(c == 0 for c in counts) or sum(counts) != frames:
        raise FrameError(
            f"the header describes {len(metas)} buffers in {sum(counts)} frames but the "
            f"message has {frames}"
        )
    return counts


def _joined(parts: Sequence[Any]) -> Any:
    """One buffer from the frames it was cut into (one copy, of bytes already received)."""
    if len(parts) == 1:
        return parts[0]
    views = [memoryview(p.buffer if hasattr(p, "buffer") else p).cast("B") for p in parts]
    if any(v.nbytes != MAX_FRAME_BYTES for v in views[:-1]):
        raise FrameError(f"a buffer cut into frames has a frame other than {MAX_FRAME_BYTES} bytes")
    return b"".join(views)


class _Decoder:
    def __init__(self, metas: Any, frames: Sequence[Any], allow_pickle: bool, copy: bool):
        counts = _frame_counts(metas, len(frames))
        ends = list(itertools.accumulate(counts))
        self.metas = metas
        self.frames = [frames[e - c : e] for e, c in zip(ends, counts, strict=True)]
        self.allow_pickle, self.copy = allow_pickle, copy

    def buffer(self, index: object, kind: str) -> tuple[dict[str, Any], Any]:
        i = _int(index, "a buffer reference")
        if i >= len(self.metas):
            raise FrameError(f"buffer reference {i} is out of range")
        meta = self.metas[i]
        if not isinstance(meta, dict) or meta.get("type") != kind:
            raise FrameError(f"buffer {i} is not of type {kind!r}")
        return meta, _joined(self.frames[i])

    def tree(self, node: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise FrameError(f"item nested deeper than {MAX_DEPTH} levels")
        if not isinstance(node, list) or len(node) != 2 or not isinstance(node[0], str):
            raise FrameError("malformed item structure in the header")
        code, value = node
        if code == "v":
            if not isinstance(value, _SCALARS):
                raise FrameError("malformed scalar in the header")
            return value
        if code == "f":
            if value not in ("nan", "inf", "-inf"):
                raise FrameError("malformed float in the header")
            return float(value)
        if code in ("a", "s"):
            arr = _array(*self.buffer(value, "array"), self.copy)
            return arr[()] if code == "s" else arr
        if code == "b":
            return bytes(self.buffer(value, "bytes")[1])
        if code == "p":
            return self.unpickle(value)
        if code in ("d", "l", "t"):
            if not isinstance(value, list):
                raise FrameError("malformed container in the header")
            if code == "l":
                return [self.tree(v, depth + 1) for v in value]
            if code == "t":
                return tuple(self.tree(v, depth + 1) for v in value)
            pairs = {}
            for pair in value:
                if not (isinstance(pair, list) and len(pair) == 2):
                    raise FrameError("malformed dict entry in the header")
                if not isinstance(pair[0], _SCALARS):
                    raise FrameError("malformed dict key in the header")
                pairs[pair[0]] = self.tree(pair[1], depth + 1)
            return pairs
        raise FrameError(f"unknown item code {code!r:.20} in the header")

    def unpickle(self, index: object) -> Any:
        meta, frame = self.buffer(index, "pickle")
        if not self.allow_pickle:
            raise FrameError(
                "the message holds pickled data and allow_pickle is False: refused unread"
            )
        blob = bytes(frame)
        if not hmac.compare_digest(hashlib.sha256(blob).hexdigest(), str(meta.get("sha256"))):
            raise FrameError("a pickled buffer does not match its authenticated digest")
        return pickle.loads(blob)


def decode(
    frames: Sequence[Any], *, seq: int, key: bytes, allow_pickle: bool = False, copy: bool = False
) -> tuple[str, Any]:
    """``(kind, item)`` from the frames of one message; `FrameError` if anything is wrong."""
    if len(frames) < 2:
        raise FrameError(
            f"a message needs a tag and a header, got {len(frames)} frame(s)", authentic=False
        )
    tag, header = (bytes(f.bytes if hasattr(f, "bytes") else f) for f in frames[:2])
    if len(header) > MAX_HEADER_BYTES:
        raise FrameError(
            f"header of {len(header)} bytes exceeds {MAX_HEADER_BYTES}", authentic=False
        )
    if not hmac.compare_digest(tag, tag_of(key, header)):
        raise FrameError(
            "the message is not authentic (bad tag): not from this stream's worker",
            authentic=False,
        )
    try:
        head = json.loads(header)
    except (ValueError, RecursionError) as exc:
        raise FrameError(f"the header is not valid JSON: {exc}") from None
    if not isinstance(head, dict) or head.get("v") != VERSION:
        raise FrameError("the header is not a headrace wire header of this version")
    if head.get("seq") != seq:
        raise FrameError(f"message {head.get('seq')!r:.20} arrived where {seq} was expected")
    kind = head.get("kind")
    if kind in (END, ERROR):
        if len(frames) != 2:
            raise FrameError(f"an {kind} message carries no buffers")
        return kind, None
    if kind != ITEM:
        raise FrameError(f"unknown message kind {kind!r:.20}")
    decoder = _Decoder(head.get("buffers"), frames[2:], allow_pickle, copy)
    return ITEM, decoder.tree(head.get("tree"))
