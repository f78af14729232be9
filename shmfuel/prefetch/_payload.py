"""How the stream travels to the producers: cloudpickle, once.

Each producer runs its own unpickled copy of the stream, whatever the start
method, but large arrays the stream holds (an in-memory dataset) are not
copied into each producer:

* with ``fork`` they need not be pickled at all: the child already has the
  parent's memory, copy-on-write. They are left out of the payload by
  reference (``persistent_id``) and found again in the child in
  ``_INHERITED``, which the fork copied;
* otherwise (forkserver, spawn) they go out of band (pickle protocol 5) into
  one anonymous shared segment with the pickle (``to_segment``), which every
  producer maps copy-on-write (``from_segment``): the arrays are views of
  it, so a producer's writes stay its own, as after a fork.

So N producers share one copy of an in-memory dataset and start without
unpickling it. Arrays of at least ``SHARE_BYTES`` are shared this way.

The segment: a header (pickle length, number of arrays), then (offset,
length) of each array, the pickle, and the arrays, each at a page boundary.
"""

from __future__ import annotations

import io
import mmap
import os
import pickle
import struct
from typing import Any, NamedTuple

import numpy

from shmfuel.prefetch import ring

SHARE_BYTES = 1 << 20
_INHERITED: dict[int, Any] = {}
_TAG = "shmfuel-inherited"
_HEADER = struct.Struct("<QQ")  # pickle length, arrays
_ENTRY = struct.Struct("<QQ")   # offset, length of one array


class Payload(NamedTuple):
    data: bytes                        # the pickle
    kept: dict[int, Any]               # fork: arrays the children inherit
    buffers: list[pickle.PickleBuffer]  # otherwise: arrays out of band


def _pickler_class() -> type:
    import cloudpickle

    class Pickler(cloudpickle.CloudPickler):
        def __init__(self, file: Any, inherit: bool) -> None:
            super().__init__(file, protocol=5,
                             buffer_callback=None if inherit else self.share)
            self.inherit = inherit
            self.kept: dict[int, Any] = {}
            self.buffers: list[pickle.PickleBuffer] = []

        def persistent_id(self, obj: Any) -> Any:
            if (self.inherit and type(obj) is numpy.ndarray
                    and obj.nbytes >= SHARE_BYTES):
                self.kept[id(obj)] = obj
                return (_TAG, id(obj))
            return None

        def share(self, buffer: pickle.PickleBuffer) -> bool:
            """Out of band (False) if large, else in the pickle (True)."""
            if buffer.raw().nbytes < SHARE_BYTES:
                return True
            self.buffers.append(buffer)
            return False
    return Pickler


def dumps(stream: Any, inherit: bool) -> Payload:
    """The pickled stream; with ``inherit``, the arrays a forked child must
    find in memory, else the arrays to send out of band."""
    file = io.BytesIO()
    pickler = _pickler_class()(file, inherit)
    pickler.dump(stream)
    return Payload(file.getvalue(), pickler.kept, pickler.buffers)


class _Unpickler(pickle.Unpickler):
    def persistent_load(self, pid: Any) -> Any:
        tag, key = pid
        if tag != _TAG or key not in _INHERITED:
            raise pickle.UnpicklingError(
                "the stream refers to an array this process did not inherit "
                "(only fork-started producers can)")
        return _INHERITED[key]


def loads(data: bytes, buffers: Any = ()) -> Any:
    return _Unpickler(io.BytesIO(data), buffers=buffers).load()


def _layout(payload: Payload) -> tuple[list[tuple[int, int]], int]:
    """Where each array goes in the segment, and the segment's size."""
    end = (_HEADER.size + _ENTRY.size * len(payload.buffers)
           + len(payload.data))
    places = []
    for buffer in payload.buffers:
        offset = ring.round_up(end)
        places.append((offset, buffer.raw().nbytes))
        end = offset + buffer.raw().nbytes
    return places, end


def to_segment(payload: Payload) -> tuple[int, int]:
    """An anonymous shared segment holding ``payload``: its file descriptor
    and size.

    A producer that is not forked reads the stream from it: one copy for
    any number of producers, and process starts that need not wait for
    each child to take a large argument off a pipe.
    """
    places, size = _layout(payload)
    fix = ("free memory, or make the stream smaller: open large data in "
           "the producers (NpyDataset, H5PYDataset) instead of holding it, "
           "or pass start_method='fork', which needs no copy")
    fd = ring.create_segment(size, "the pickled data stream", fix)
    try:
        with mmap.mmap(fd, size, flags=mmap.MAP_SHARED,
                       prot=mmap.PROT_READ | mmap.PROT_WRITE) as mapping:
            head = _HEADER.pack(len(payload.data), len(places)) + b"".join(
                _ENTRY.pack(*place) for place in places)
            mapping[:len(head)] = head
            mapping[len(head):len(head) + len(payload.data)] = payload.data
            for buffer, (offset, nbytes) in zip(payload.buffers, places):
                mapping[offset:offset + nbytes] = buffer.raw()
    except BaseException:
        os.close(fd)
        raise
    return fd, size


def from_segment(fd: int, size: int) -> tuple[bytes, list[memoryview]]:
    """The pickle, and the arrays' memory, from a ``to_segment`` segment.

    The segment is mapped copy-on-write: the arrays are views of its shared
    pages until a producer writes to them.
    """
    mapping = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE,
                        prot=mmap.PROT_READ | mmap.PROT_WRITE)
    length, count = _HEADER.unpack_from(mapping)
    start = _HEADER.size + _ENTRY.size * count
    data = mapping[start:start + length]
    places = list(_ENTRY.iter_unpack(mapping[_HEADER.size:start]))
    if not places:
        mapping.close()
        return data, []
    whole = memoryview(mapping)
    return data, [whole[offset:offset + nbytes] for offset, nbytes in places]


class inherited:
    """Context manager: make ``kept`` visible to processes forked inside."""

    def __init__(self, kept: dict[int, Any]) -> None:
        self.kept = kept

    def __enter__(self) -> None:
        _INHERITED.update(self.kept)

    def __exit__(self, *exc_info: Any) -> None:
        for key in self.kept:
            _INHERITED.pop(key, None)
