"""Slot layout and message codecs of the ring. Pure: no processes, no I/O.

A slot is one shared mapping. A batch is written into it as::

    offset 0   fixed header  <4sHHIQQQ: magic, version, reserved,
                             meta_len, seq, epoch, producer busy ns
    offset 40  meta          marshal of one (kind, dtype, shape, offset,
                             nbytes) tuple per source
    aligned    data          each source at a 64-byte aligned offset

The stamp (seq, epoch, busy ns) is the batch's own where batches are
announced over the socket; with a control page its MSG_READY carries the
busy ns, and the slot keeps the stamp of the batch that last wrote its
header (a batch of the same layout writes only its data).

``kind`` is ARRAY (raw C-ordered bytes of a plain ndarray with a
fixed-size dtype; read back as a view) or PICKLED (anything else: lists,
object or structured arrays, scalars, ndarray subclasses; read back equal
and of the same type). Nothing is ever converted silently.

The producer and the consumer also exchange fixed 16-byte messages
``<IIQ`` (type, a, b), through the producer's control page (see
``control``) or over its socket; ``MSG_ERROR`` is followed by ``b`` bytes
of payload and ``MSG_SEGMENT`` carries a file descriptor, on the socket
either way. The kind of each
item of a producer's sequence travels there, in order: a batch
(``MSG_READY`` naming its slot), the end of an epoch (``MSG_END``), or an
error (``MSG_ERROR``); only batches occupy a slot, so an end or an error
can always be sent, even when every slot is taken.
"""

from __future__ import annotations

import marshal
import pickle
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy

MAGIC = b"SHMF"
VERSION = 1
FIXED = struct.Struct("<4sHHIQQQ")
STAMP = struct.Struct("<QQQ")      # seq, epoch, busy ns, inside FIXED
STAMP_OFFSET = 12
ALIGN = 64

ARRAY = 0
PICKLED = 1

# producer -> consumer
MSG_READY = 1      # a=slot: the slot holds the next batch
MSG_SEGMENT = 2    # a=slot, b=size: a new mapping for the slot (fd attached)
MSG_END = 3        # b=epoch: the epoch has no more batches
MSG_ERROR = 4      # b=payload length: the pipeline raised; payload follows
# consumer -> producer
MSG_FREE = 5       # a=slot: the consumer no longer reads the slot
MSG_START = 6      # b=epoch: the consumer started this epoch
MSG_STOP = 7       # shut down
MSG_CONTROL = 8    # a=slots, b=size: the control page (fd attached; first
                   # after the stream)
# either way
MSG_WAKE = 9       # look at the control page (see ``control``)
# consumer -> producer, when not forked
MSG_STREAM = 10    # b=size: the pickled stream (fd attached; the very first)
_LAST = MSG_STREAM
MESSAGE = struct.Struct("<IIQ")


class SourceSpec(NamedTuple):
    """Where one source lies in a slot; ``dtype`` is None when pickled."""
    kind: int
    dtype: Any
    shape: tuple[int, ...]
    offset: int
    nbytes: int


class BatchPlan(NamedTuple):
    """What :func:`plan_batch` decided; ``size`` is the bytes the slot needs."""
    header: bytes
    specs: tuple[SourceSpec, ...]
    payloads: tuple[Any, ...]
    size: int


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def is_raw_array(value: Any) -> bool:
    """Whether ``value`` can travel as raw bytes and come back as a view."""
    return (type(value) is numpy.ndarray and not value.dtype.hasobject
            and value.dtype.fields is None and value.dtype.subdtype is None)


def stamp(buffer: Any, header: bytes, seq: int, epoch: int,
          busy_ns: int) -> None:
    """Write a planned header with this batch's sequence numbers."""
    buffer[:len(header)] = header
    STAMP.pack_into(buffer, STAMP_OFFSET, seq, epoch, busy_ns)


def plan_batch(batch: Sequence[Any], seq: int, epoch: int,
               busy_ns: int = 0) -> BatchPlan:
    """Lay out ``batch`` (a tuple of sources) for a slot."""
    kinds, dtypes, shapes, sizes, payloads = [], [], [], [], []
    for value in batch:
        if is_raw_array(value):
            kinds.append(ARRAY)
            dtypes.append(value.dtype.str)
            shapes.append(tuple(int(n) for n in value.shape))
            sizes.append(value.nbytes)
            payloads.append(value)
        else:
            data = pickle.dumps(value, protocol=5)
            kinds.append(PICKLED)
            dtypes.append("")
            shapes.append(())
            sizes.append(len(data))
            payloads.append(data)
    # The meta's length depends on the offsets, which depend on where the
    # data starts: reserve room for 8-byte ints by planning twice.
    start = 0
    while True:
        offsets, position = [], start
        for size in sizes:
            offsets.append(position)
            position = _align(position + size)
        specs = tuple(SourceSpec(*fields) for fields in zip(
            kinds, dtypes, shapes, offsets, sizes))
        meta = marshal.dumps(tuple(tuple(s) for s in specs))
        data_start = _align(FIXED.size + len(meta))
        if data_start == start:
            break
        start = data_start
    header = FIXED.pack(MAGIC, VERSION, 0, len(meta), seq, epoch,
                        busy_ns) + meta
    end = specs[-1].offset + specs[-1].nbytes if specs else data_start
    return BatchPlan(header, specs, tuple(payloads), max(end, len(header)))


def write_batch(buffer: Any, plan: BatchPlan) -> None:
    """Copy a planned batch into ``buffer`` (a writable buffer, >= plan.size)."""
    view = memoryview(buffer)
    view[:len(plan.header)] = plan.header
    for spec, payload in zip(plan.specs, plan.payloads):
        if spec.kind == ARRAY:
            target = numpy.frombuffer(buffer, numpy.uint8, spec.nbytes,
                                      spec.offset)
            numpy.copyto(target.view(payload.dtype).reshape(payload.shape),
                         payload, casting="no")
        else:
            view[spec.offset:spec.offset + spec.nbytes] = payload


def decode_meta(meta: bytes) -> tuple[SourceSpec, ...]:
    """The source specs in a header's meta bytes (dtypes as numpy dtypes)."""
    return tuple(SourceSpec(kind, numpy.dtype(dtype) if kind == ARRAY else None,
                            tuple(shape), offset, nbytes)
                 for kind, dtype, shape, offset, nbytes in marshal.loads(meta))


def read_fixed(buffer: Any) -> tuple[int, int, int, bytes]:
    """``(seq, epoch, busy_ns, meta bytes)`` of the batch in ``buffer``.

    Raises
    ------
    ValueError
        If the buffer does not hold a batch of this version.

    """
    magic, version, _, meta_len, seq, epoch, busy = FIXED.unpack_from(buffer)
    if magic != MAGIC or version != VERSION:
        raise ValueError(f"slot holds no shmfuel batch (magic {magic!r}, "
                         f"version {version})")
    return seq, epoch, busy, bytes(buffer[FIXED.size:FIXED.size + meta_len])


def read_header(buffer: Any) -> tuple[int, int, int, tuple[SourceSpec, ...]]:
    """``(seq, epoch, busy_ns, specs)`` of the batch in ``buffer``."""
    seq, epoch, busy, meta = read_fixed(buffer)
    return seq, epoch, busy, decode_meta(meta)


def read_batch(owner: numpy.ndarray, specs: Sequence[SourceSpec],
               copy: bool = False) -> tuple[tuple[Any, ...], bool]:
    """Rebuild a batch from ``owner`` (a uint8 array over the slot).

    Returns the sources and whether any of them is a view of ``owner``
    (each view's ``base`` is ``owner``).
    """
    values = []
    has_view = False
    for kind, dtype, shape, offset, nbytes in specs:
        if kind == ARRAY:
            array = numpy.ndarray(shape, dtype, buffer=owner, offset=offset)
            if copy:
                array = array.copy()
            else:
                has_view = True
            values.append(array)
        else:
            values.append(pickle.loads(owner[offset:offset + nbytes].data))
    return tuple(values), has_view


def encode_message(kind: int, a: int = 0, b: int = 0) -> bytes:
    return MESSAGE.pack(kind, a, b)


def decode_messages(data: bytes) -> tuple[list[tuple[int, int, Any]], bytes]:
    """Split received bytes into messages; returns them and the leftover.

    A ``MSG_ERROR`` message comes back as ``(MSG_ERROR, 0, payload)``.
    """
    size = MESSAGE.size
    whole = len(data) - len(data) % size
    messages = list(MESSAGE.iter_unpack(data[:whole]))
    if all(MSG_READY <= kind <= _LAST and kind != MSG_ERROR
           for kind, _, _ in messages):
        return messages, data[whole:]
    # An error (with its payload) or garbage: go message by message.
    messages = []
    position = 0
    while len(data) - position >= size:
        kind, a, b = MESSAGE.unpack_from(data, position)
        if kind == MSG_ERROR:
            if len(data) - position - size < b:
                break
            messages.append((kind, a, data[position + size:
                                           position + size + b]))
            position += size + b
            continue
        if not MSG_READY <= kind <= _LAST:
            raise ValueError(f"unknown ring message type {kind}")
        messages.append((kind, a, b))
        position += size
    return messages, data[position:]


def encode_error(exc: BaseException, tb: str) -> bytes:
    """Pickle an exception and its formatted traceback for the consumer."""
    exc_bytes: bytes | None
    try:
        exc_bytes = pickle.dumps(exc, protocol=5)
        pickle.loads(exc_bytes)
    except Exception:
        exc_bytes = None
    payload = pickle.dumps((exc_bytes, type(exc).__qualname__, str(exc), tb),
                           protocol=5)
    return encode_message(MSG_ERROR, 0, len(payload)) + payload


def decode_error(payload: bytes) -> tuple[BaseException | None, str, str, str]:
    """``(exception or None, type name, message, traceback)``."""
    exc_bytes, name, message, tb = pickle.loads(payload)
    exc: BaseException | None = None
    if exc_bytes is not None:
        try:
            exc = pickle.loads(exc_bytes)
        except Exception:
            exc = None
    return exc, name, message, tb
