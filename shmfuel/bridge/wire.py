"""The bridge's wire format: messages <-> lists of frames. Pure.

Every message is one ZeroMQ multipart message. Frame 0 is its header; the
other frames are raw buffers that the header points into. Control
messages have a small JSON header, always with ``"v"`` (the protocol
version) and ``"type"``. Client -> server::

    hello     {"shard": null}                 -> welcome / error
    epoch     {"epoch": e, "credits": n}      make epoch e current; n more
                                              batches may be sent
    credit    {"credits": n}                  n more batches may be sent
    bye       {}

Server -> client::

    welcome   {"sources", "produces_examples", "axis_labels", "shard",
               "allow_pickle"}
    end       {"epoch"}
    error     {"exc_type", "message", "traceback", "epoch"}
    heartbeat {}                              the server is alive, busy

A batch, the message sent many thousand times a second, has a binary
header instead (its first byte, zero, starts no JSON text)::

    batch     b"\\0sf", version (u8), n (u32), epoch (i64), seq (i64),
              little-endian; its items as JSON, [item, ...], n bytes; then,
              from the next multiple of 16, the inline data; one frame per
              other buffer

Batches that fit in one frame may travel several to a message, a bundle,
which saves each end the cost of a message per batch::

    bundle    b"\\0sb", version (u8); then one frame per batch, each a
              whole one-frame batch message

Its items' JSON is the same for every batch of the same dtypes and shapes,
so each end keeps it: the server encodes such a batch without JSON, and
the client decodes it without parsing (a few microseconds each way). The
arrays of a batch of less than ``INLINE_BYTES`` travel inline, in frame 0
(every frame costs each end about a microsecond; pyzmq would copy such
small frames anyway); larger ones in frames of their own, not copied.

Batch items are encoded without pickle: a plain numeric ndarray is
``{"t": "array", "dtype", "shape", "frame"}`` and its bytes travel in their
own frame (C order; sent and received without a copy), or
``{"t": "array", "dtype", "shape", "at"}``, inline at that offset of the
batch's inline data (aligned to 16 bytes). Other values are
a tagged tree of ``None``, ``bool``, ``int``, ``float``, ``str``,
``bytes`` (a frame), ``list``, ``tuple``, ``dict``, numpy scalars, object
arrays and nested arrays, so they arrive equal and of the same type.
Anything else needs ``allow_pickle=True`` on both ends, which unpickles
bytes from the network: use it on trusted networks only.
"""

from __future__ import annotations

import json
import math
import pickle
import struct
import sys
from typing import Any, NamedTuple

import numpy

from shmfuel.exceptions import ShmfuelError

VERSION = 2
BATCH_MAGIC = b"\0sf"
BATCH_HEAD = struct.Struct("<3sBIqq")  # magic, version, items' length, epoch, seq
BUNDLE_MAGIC = b"\0sb"
BUNDLE_HEAD = struct.Struct("<3sB")  # magic, version
INLINE_BYTES = 1 << 16  # arrays of a batch smaller than this in all: frame 0
ZMQ_COPIES_BELOW = 1 << 16  # pyzmq copies smaller frames into the message


class Copied(NamedTuple):
    """A frame to copy into its message when it is sent (the sender's
    copy: no buffer to allocate and keep until the message has gone)."""

    buffer: Any
_ALIGN = 16
_LAYOUTS_KEPT = 64  # array layouts each end remembers

HELLO, EPOCH, CREDIT, BYE = "hello", "epoch", "credit", "bye"
WELCOME, BATCH, END, ERROR, HEARTBEAT = (
    "welcome", "batch", "end", "error", "heartbeat")
CLIENT_TYPES = {HELLO, EPOCH, CREDIT, BYE}
SERVER_TYPES = {WELCOME, BATCH, END, ERROR, HEARTBEAT}

_SCALARS = (type(None), bool, int, float, str)


class WireError(ShmfuelError, ValueError):
    """A message that is not a valid shmfuel bridge message."""


class UnsafeValueError(ShmfuelError, TypeError):
    """A value that cannot travel without pickle."""


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def encode(kind: str, buffers: list[Any] | None = None,
           **fields: Any) -> list[Any]:
    """Frames of a control message: the JSON header, then ``buffers``."""
    return [_json({"v": VERSION, "type": kind, **fields})] + (buffers or [])


def count(header: dict[str, Any], name: str) -> int:
    """The header's field ``name``: a non-negative int, 0 if absent.

    Raises
    ------
    WireError
        If it is anything else.

    """
    value = header.get(name, 0)
    if type(value) is not int or value < 0:
        raise WireError(f"{name!r} must be a non-negative integer, got "
                        f"{value!r}")
    return value


def decode(frames: list[Any], expected: set[str]) -> tuple[dict[str, Any], list[Any]]:
    """Header and buffer frames of a message.

    Raises
    ------
    WireError
        If the frames are not a message of this version whose type is in
        ``expected``.

    """
    if not frames:
        raise WireError("empty message")
    first = _buffer(frames[0])
    if len(first) and first[0] == 0:  # binary: a batch
        return _decode_batch_head(first, expected), list(frames[1:])
    try:
        header = json.loads(bytes(first))
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireError(f"the first frame is not a JSON header ({exc})") from None
    if not isinstance(header, dict):
        raise WireError(f"the header is {type(header).__name__}, not an object")
    if header.get("v") != VERSION:
        raise WireError(f"protocol version {header.get('v')!r}, expected "
                        f"{VERSION}: upgrade shmfuel on both ends")
    if header.get("type") not in expected:
        raise WireError(f"unexpected message type {header.get('type')!r}; "
                        f"expected one of {sorted(expected)}")
    return header, list(frames[1:])


def _decode_batch_head(first: Any, expected: set[str]) -> dict[str, Any]:
    if len(first) < BATCH_HEAD.size or bytes(first[:3]) != BATCH_MAGIC:
        raise WireError(f"the first frame is not a header (it starts with "
                        f"{bytes(first[:8])!r})")
    _, version, length, epoch, seq = BATCH_HEAD.unpack_from(first)
    if version != VERSION:
        raise WireError(f"protocol version {version}, expected {VERSION}: "
                        "upgrade shmfuel on both ends")
    if BATCH not in expected:
        raise WireError(f"unexpected message type 'batch'; expected one of "
                        f"{sorted(expected)}")
    end = BATCH_HEAD.size + length
    if end > len(first):
        raise WireError(f"the batch's items ({length} bytes) run past the end "
                        f"of its {len(first)}-byte header")
    return {"v": version, "type": BATCH, "epoch": epoch, "seq": seq,
            "items_json": bytes(first[BATCH_HEAD.size:end]),
            "inline": first[_aligned(end):]}


def _aligned(offset: int) -> int:
    return -(-offset // _ALIGN) * _ALIGN


def _buffer(frame: Any) -> Any:
    return getattr(frame, "buffer", frame)


# -- batch items ---------------------------------------------------------------

def _is_raw_array(value: Any) -> bool:
    return (type(value) is numpy.ndarray and not value.dtype.hasobject
            and value.dtype.fields is None and value.dtype.subdtype is None)


def _leaf_types(value: list[Any]) -> set[type] | None:
    """Types of the leaves of a nested list, or None if it is not plain.

    Plain means lists holding only ``None``, ``bool``, ``int``, ``float``
    and ``str`` of exactly those types, so JSON gives it back equal and of
    the same types. JSON would turn tuples into lists, dict keys into
    strings and subclasses (``IntEnum``) into their base types: those take
    the tagged path instead.
    """
    leaves: set[type] = set()
    stack = [value]
    while stack:
        for item in stack.pop():
            kind = type(item)
            if kind is list:
                stack.append(item)
            elif kind in _SCALARS:
                leaves.add(kind)
            else:
                return None
    return leaves


class _Encoder:
    def __init__(self, allow_pickle: bool, share: bool = False) -> None:
        self.allow_pickle = allow_pickle
        self.share = share  # see BatchEncoder
        self.buffers: list[Any] = []

    def frame(self, buffer: Any) -> int:
        self.buffers.append(buffer)
        return len(self.buffers) - 1

    def item(self, value: Any) -> Any:
        kind = type(value)
        if kind in _SCALARS:
            if kind is float and not numpy.isfinite(value):
                return {"t": "float", "v": repr(value)}
            return value
        if _is_raw_array(value):
            array: Any = numpy.ascontiguousarray(value)
            node = {"t": "array", "dtype": array.dtype.str,
                    "shape": list(array.shape)}
            # beside values that are not arrays (the slower path), every
            # large array the caller does not vouch for is copied as it is
            # sent, whoever else holds it (see BatchEncoder)
            if (array is value and not self.share
                    and array.nbytes >= ZMQ_COPIES_BELOW):
                array = Copied(value)
            node["frame"] = self.frame(array)
            return node
        if kind is list:
            leaves = _leaf_types(value)
            if leaves is not None:
                if leaves in ({int}, {float}):
                    # Rectangular lists of ints or floats travel as one
                    # raw frame and come back with tolist(): same values,
                    # same types, far faster than JSON.
                    try:
                        array = numpy.array(value, dtype="<i8" if int in leaves
                                            else "<f8")
                        return {"t": "numlist", "dtype": array.dtype.str,
                                "shape": list(array.shape),
                                "frame": self.frame(array)}
                    except (ValueError, OverflowError):
                        pass
                return {"t": "json", "v": value}
            return {"t": "list", "v": [self.item(v) for v in value]}
        if kind is tuple:
            return {"t": "tuple", "v": [self.item(v) for v in value]}
        if kind is dict:
            return {"t": "dict", "v": [[self.item(k), self.item(v)]
                                       for k, v in value.items()]}
        if kind is bytes:
            return {"t": "bytes", "frame": self.frame(value)}
        if kind is numpy.ndarray and value.dtype.hasobject:
            return {"t": "objects", "shape": list(value.shape),
                    "v": [self.item(v) for v in value.ravel().tolist()]}
        if isinstance(value, numpy.generic) and type(value) is value.dtype.type \
                and not value.dtype.hasobject and value.dtype.fields is None:
            return {"t": "scalar", "dtype": value.dtype.str,
                    "frame": self.frame(value.tobytes())}
        if self.allow_pickle:
            return {"t": "pickle", "frame": self.frame(
                pickle.dumps(value, protocol=5))}
        raise UnsafeValueError(
            f"a {kind.__module__}.{kind.__qualname__} cannot be sent without "
            "pickle; convert it in the pipeline, or pass allow_pickle=True to "
            "both start_server and ServerDataStream (trusted networks only)")


class _Decoder:
    def __init__(self, frames: list[Any], allow_pickle: bool,
                 inline: Any = b"") -> None:
        self.frames = frames
        self.allow_pickle = allow_pickle
        self.inline = inline

    def array(self, node: dict[str, Any]) -> Any:
        dtype = numpy.dtype(node["dtype"])
        if dtype.hasobject:
            raise WireError("object dtypes cannot travel as raw arrays")
        shape = tuple(node["shape"])
        if "at" not in node:
            return numpy.frombuffer(self.frame(node), dtype).reshape(shape)
        at, count = node["at"], math.prod(shape)
        if not isinstance(at, int) or at < 0 or (
                at + count * dtype.itemsize > len(self.inline)):
            raise WireError(f"an inline array at {at!r} runs past the "
                            f"{len(self.inline)} bytes of inline data")
        return numpy.frombuffer(self.inline, dtype, count, at).reshape(shape)

    def frame(self, node: dict[str, Any]) -> Any:
        index = node.get("frame")
        if not isinstance(index, int) or not 0 <= index < len(self.frames):
            raise WireError(f"item refers to frame {index!r}, but the "
                            f"message has {len(self.frames)} data frames")
        return _buffer(self.frames[index])

    def item(self, node: Any) -> Any:
        if node is None or type(node) in (bool, int, float, str):
            return node
        if not isinstance(node, dict) or "t" not in node:
            raise WireError(f"malformed item {str(node)[:80]!r}")
        tag = node["t"]
        try:
            if tag == "array":
                return self.array(node)
            if tag == "numlist":
                dtype = numpy.dtype(node["dtype"])
                if dtype.kind not in "if":
                    raise WireError("a 'numlist' item must hold ints or floats")
                return numpy.frombuffer(self.frame(node), dtype).reshape(
                    node["shape"]).tolist()
            if tag == "json":
                if not isinstance(node["v"], list):
                    raise WireError("a 'json' item must hold a list")
                return node["v"]
            if tag == "list":
                return [self.item(v) for v in node["v"]]
            if tag == "tuple":
                return tuple(self.item(v) for v in node["v"])
            if tag == "dict":
                return {self.item(k): self.item(v) for k, v in node["v"]}
            if tag == "bytes":
                return bytes(self.frame(node))
            if tag == "float":
                return float(node["v"])
            if tag == "objects":
                values = [self.item(v) for v in node["v"]]
                array = numpy.empty(len(values), dtype=object)
                for i, value in enumerate(values):
                    array[i] = value
                return array.reshape(node["shape"])
            if tag == "scalar":
                dtype = numpy.dtype(node["dtype"])
                if dtype.hasobject:
                    raise WireError("object dtypes cannot travel as scalars")
                return numpy.frombuffer(self.frame(node), dtype)[0]
            if tag == "pickle":
                if not self.allow_pickle:
                    raise UnsafeValueError(
                        "the server sent a pickled value; unpickling data "
                        "from the network can run arbitrary code, so pass "
                        "allow_pickle=True only if you trust the server and "
                        "the network")
                return pickle.loads(self.frame(node))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, (WireError, UnsafeValueError)):
                raise
            raise WireError(f"malformed {tag!r} item: {exc}") from None
        raise WireError(f"unknown item tag {tag!r}")


class BatchEncoder:
    """Encodes batches, remembering the items' JSON of array-only ones.

    An array in a frame of its own is sent without a copy, so it is read
    after ``encode`` returns, while the stream makes the next batch. That
    is safe for an array that owns its memory and that nothing else
    references (nothing can write into it), and, with ``share=True``, for
    every array (the caller vouches for them: a Prefetcher's views, whose
    slots are reused only once every view is gone). Any other array goes
    out as :class:`Copied`, to be copied into its message as it is sent: a
    stream may write its next batch into the same buffer.
    """

    def __init__(self, allow_pickle: bool = False, share: bool = False) -> None:
        self.allow_pickle = allow_pickle
        self.share = share
        # (dtype, shape) per source -> items' JSON, and for inline arrays
        # the padding before each, or None (a frame each)
        self.layouts: dict[tuple[Any, ...], tuple[bytes, list[bytes] | None]] = {}

    def encode(self, epoch: int, seq: int, batch: Any) -> list[Any]:
        """Frames of one batch (a tuple of sources)."""
        if all(_is_raw_array(value) for value in batch):
            key = tuple([(value.dtype, value.shape) for value in batch])
            layout = self.layouts.get(key)
            if layout is None:
                layout = self._plan(key)
            items, pads = layout
            head = BATCH_HEAD.pack(BATCH_MAGIC, VERSION, len(items), epoch, seq)
            if pads is None:
                frames = [head + items]
                for value in batch:
                    if not value.flags.c_contiguous:
                        value = numpy.ascontiguousarray(value)
                    # a frame is read after encode returns: share an array
                    # only if nothing else can write into it (class doc);
                    # when only the batch holds it, getrefcount sees 3 (the
                    # batch, this loop and its own argument)
                    elif not (self.share or value.nbytes < ZMQ_COPIES_BELOW
                              or (value.base is None
                                  and sys.getrefcount(value) <= 3)):
                        value = Copied(value)
                    frames.append(value)
                return frames
            arrays = [value if value.flags.c_contiguous
                      else numpy.ascontiguousarray(value) for value in batch]
            parts: list[Any] = [head, items]
            for pad, array in zip(pads, arrays):
                parts.append(pad)
                parts.append(array)
            return [b"".join(parts)]
        encoder = _Encoder(self.allow_pickle, self.share)
        text = _json([encoder.item(value) for value in batch])
        return [BATCH_HEAD.pack(BATCH_MAGIC, VERSION, len(text), epoch, seq)
                + text] + encoder.buffers

    def _plan(self, key: tuple[Any, ...]) -> tuple[bytes, list[bytes] | None]:
        sizes = [dtype.itemsize * math.prod(shape) for dtype, shape in key]
        items: list[dict[str, Any]] = [
            {"t": "array", "dtype": dtype.str, "shape": list(shape)}
            for dtype, shape in key]
        if sum(sizes) >= INLINE_BYTES:
            for index, item in enumerate(items):
                item["frame"] = index
            layout: tuple[bytes, list[bytes] | None] = (_json(items), None)
        else:
            at = 0
            for item, size in zip(items, sizes):
                item["at"] = at = _aligned(at)
                at += size
            text = _json(items)
            end, pads = BATCH_HEAD.size + len(text), []
            for item, size in zip(items, sizes):
                start = _aligned(BATCH_HEAD.size + len(text)) + item["at"]
                pads.append(bytes(start - end))
                end = start + size
            layout = (text, pads)
        if len(self.layouts) >= _LAYOUTS_KEPT:
            self.layouts.clear()
        self.layouts[key] = layout
        return layout


class BatchDecoder:
    """Decodes batches, remembering how to read array-only ones."""

    def __init__(self, allow_pickle: bool = False) -> None:
        self.allow_pickle = allow_pickle
        # items' JSON -> per source: (frame, or -1 for inline, dtype, shape,
        # offset in frame 0, count), once decoded in full
        self.layouts: dict[bytes, tuple[tuple[int, Any, Any, int, int], ...]] = {}

    def batch(self, frames: list[Any]) -> tuple[int, int, list[Any]] | None:
        """``(epoch, seq, sources)`` of a batch message; None for any other
        message (see :func:`decode`). The receiving end's hot path."""
        first = _buffer(frames[0])
        if not len(first) or first[0] != 0:
            return None
        if len(first) < BATCH_HEAD.size:
            _decode_batch_head(first, {BATCH})  # raises
        magic, version, length, epoch, seq = BATCH_HEAD.unpack_from(first)
        if magic != BATCH_MAGIC or version != VERSION:
            _decode_batch_head(first, {BATCH})  # raises
        layout = self.layouts.get(
            bytes(first[BATCH_HEAD.size:BATCH_HEAD.size + length]))
        if layout is None:
            header = _decode_batch_head(first, {BATCH})
            return epoch, seq, self.decode(header, frames[1:])
        try:
            return epoch, seq, [
                numpy.frombuffer(first, dtype, count, offset).reshape(shape)
                if index < 0 else
                numpy.frombuffer(_buffer(frames[index + 1]), dtype).reshape(shape)
                for index, dtype, shape, offset, count in layout]
        except (IndexError, TypeError, ValueError) as exc:
            raise WireError(f"malformed 'array' item: {exc}") from None

    def decode(self, header: dict[str, Any], frames: list[Any]) -> list[Any]:
        """The sources of a batch message (a header from :func:`decode`)."""
        text = header.get("items_json")
        inline = header.get("inline", b"")
        if text is None:  # a header given as a dict
            return self._decode(header.get("items"), frames, inline)
        try:
            items = json.loads(text)
        except (UnicodeDecodeError, ValueError) as exc:
            raise WireError(f"the batch's items are not JSON ({exc})") from None
        values = self._decode(items, frames, inline)
        if all(type(node) is dict and node.get("t") == "array"
               for node in items):
            if len(self.layouts) >= _LAYOUTS_KEPT:
                self.layouts.clear()
            start = _aligned(BATCH_HEAD.size + len(text))
            self.layouts[text] = tuple(
                (node.get("frame", -1), value.dtype, value.shape,
                 start + node.get("at", 0), value.size)
                for node, value in zip(items, values))
        return values

    def _decode(self, items: Any, frames: list[Any], inline: Any) -> list[Any]:
        if not isinstance(items, list):
            raise WireError("batch message without an item list")
        decoder = _Decoder(frames, self.allow_pickle, inline)
        return [decoder.item(item) for item in items]


def encode_batch(epoch: int, seq: int, batch: Any,
                 allow_pickle: bool = False) -> list[Any]:
    """Frames of one batch (a tuple of sources)."""
    return BatchEncoder(allow_pickle).encode(epoch, seq, batch)


def decode_batch(header: dict[str, Any], frames: list[Any],
                 allow_pickle: bool = False) -> list[Any]:
    """The sources of a batch message."""
    return BatchDecoder(allow_pickle).decode(header, frames)


def bundle(batches: list[Any]) -> list[Any]:
    """Frames of one message carrying one-frame batch messages."""
    return [BUNDLE_HEAD.pack(BUNDLE_MAGIC, VERSION)] + batches


def unbundle(frames: list[Any]) -> list[Any] | None:
    """The batch frames of a bundle; None for any other message."""
    first = _buffer(frames[0])
    if len(first) != BUNDLE_HEAD.size or bytes(first[:3]) != BUNDLE_MAGIC:
        return None
    version = first[3]
    if version != VERSION:
        raise WireError(f"protocol version {version}, expected {VERSION}: "
                        "upgrade shmfuel on both ends")
    if len(frames) < 2:
        raise WireError("an empty bundle")
    return list(frames[1:])
