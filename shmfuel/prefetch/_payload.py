"""How the stream travels to the producers: cloudpickle, once.

Each producer runs its own unpickled copy of the stream, whatever the start
method. With ``fork``, though, large arrays the stream holds (an in-memory
dataset) need not be pickled at all: the child already has the parent's
memory, copy-on-write. They are left out of the payload by reference
(``persistent_id``) and found again in the child in ``_INHERITED``, which
the fork copied. So N producers share one copy of an in-memory dataset
instead of each unpickling its own, and start in milliseconds. Other start
methods get the payload in a shared segment (``to_segment``) rather than
as a process argument.
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any

import numpy

from shmfuel.exceptions import SharedMemoryError
from shmfuel.prefetch import ring

INHERIT_BYTES = 1 << 20
_INHERITED: dict[int, Any] = {}
_TAG = "shmfuel-inherited"


def _pickler_class() -> type:
    import cloudpickle

    class Pickler(cloudpickle.CloudPickler):
        def __init__(self, file: Any, inherit: bool) -> None:
            super().__init__(file, protocol=5)
            self.inherit = inherit
            self.kept: dict[int, Any] = {}

        def persistent_id(self, obj: Any) -> Any:
            if (self.inherit and type(obj) is numpy.ndarray
                    and obj.nbytes >= INHERIT_BYTES):
                self.kept[id(obj)] = obj
                return (_TAG, id(obj))
            return None
    return Pickler


def dumps(stream: Any, inherit: bool) -> tuple[bytes, dict[int, Any]]:
    """The payload, and the arrays a forked child must find in memory."""
    buffer = io.BytesIO()
    pickler = _pickler_class()(buffer, inherit)
    pickler.dump(stream)
    return buffer.getvalue(), pickler.kept


class _Unpickler(pickle.Unpickler):
    def persistent_load(self, pid: Any) -> Any:
        tag, key = pid
        if tag != _TAG or key not in _INHERITED:
            raise pickle.UnpicklingError(
                "the stream refers to an array this process did not inherit "
                "(only fork-started producers can)")
        return _INHERITED[key]


def loads(payload: bytes) -> Any:
    return _Unpickler(io.BytesIO(payload)).load()


def to_segment(payload: bytes) -> int:
    """An anonymous shared segment holding ``payload``, as a file descriptor.

    A producer that is not forked reads the stream from it: one copy for
    any number of producers, and process starts that need not wait for
    each child to take a large argument off a pipe.
    """
    fix = ("free memory, or make the stream smaller: open large data in "
           "the producers (NpyDataset, H5PYDataset) instead of holding it, "
           "or pass start_method='fork', which shares it")
    fd = ring.create_segment(len(payload), "the pickled data stream", fix)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.pwrite(fd, view, len(payload) - len(view)):]
    except OSError as exc:
        os.close(fd)
        raise SharedMemoryError(
            f"cannot write the {len(payload) / 2**20:.1f} MiB pickled data "
            f"stream to shared memory ({exc.strerror}); {fix}") from exc
    return fd


def from_segment(fd: int, size: int) -> bytes:
    """The payload's bytes, read from the segment ``to_segment`` made."""
    chunks, done = [], 0
    while done < size:
        chunk = os.pread(fd, size - done, done)
        if not chunk:
            raise EOFError(f"the pickled data stream ends after {done} of "
                           f"{size} bytes")
        chunks.append(chunk)
        done += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class inherited:
    """Context manager: make ``kept`` visible to processes forked inside."""

    def __init__(self, kept: dict[int, Any]) -> None:
        self.kept = kept

    def __enter__(self) -> None:
        _INHERITED.update(self.kept)

    def __exit__(self, *exc_info: Any) -> None:
        for key in self.kept:
            _INHERITED.pop(key, None)
