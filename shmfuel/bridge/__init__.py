"""The ZeroMQ bridge: serve a stream over TCP, read it from another machine.

``wire`` (pure) defines the messages; ``server`` runs a stream behind a
ROUTER socket; ``client`` is :class:`ServerDataStream`. pyzmq is optional
(``pip install 'shmfuel[zmq]'``): these modules import without it and
raise ``ImportError`` naming the fix when used.
"""

from __future__ import annotations

import collections
from sys import getrefcount
from typing import Any

import numpy

from shmfuel._extras import require
from shmfuel.bridge.wire import Copied


def require_zmq() -> Any:
    """The ``zmq`` module, or an ImportError that says how to install it."""
    return require("zmq", "zmq", "the shmfuel bridge")


# Multipart messages a frame at a time: pyzmq's send_multipart and
# recv_multipart cost several microseconds more per message (argument
# checks, and a getsockopt(RCVMORE) per frame through its enum wrappers),
# as much as the rest of a small batch's trip.
_SNDMORE, _NOBLOCK = 2, 1  # ZMQ_SNDMORE, ZMQ_DONTWAIT


class SendBuffers:
    """Buffers that large ``wire.Copied`` frames are copied into, reused.

    pyzmq's own copy goes into a new message buffer each time; from
    ``POOLED_FROM`` bytes the allocator hands out fresh pages for it, and
    the page faults cost more than the copy (a 1 MiB batch: about 100
    faults, twice the copy's time). A buffer here is sent without a copy
    and written again only once nothing but this pool references it
    (pyzmq drops its reference when the message has gone), the test the
    Prefetcher's consumer uses for its slots. At most ``per_size`` buffers
    of each of the last ``sizes`` sizes are kept; past that, pyzmq copies.
    """

    POOLED_FROM = 1 << 17

    def __init__(self, per_size: int = 32, sizes: int = 4) -> None:
        self.per_size = per_size
        self.sizes = sizes
        self.pools: collections.OrderedDict[int, list[numpy.ndarray]] = (
            collections.OrderedDict())

    def copy(self, value: Any) -> numpy.ndarray | None:
        """A pooled copy of the C-contiguous array ``value`` (as bytes),
        or None: too small to pool, or every buffer of its size in use."""
        nbytes = value.nbytes
        if nbytes < self.POOLED_FROM:
            return None
        pool = self.pools.get(nbytes)
        if pool is None:
            if len(self.pools) >= self.sizes:
                self.pools.popitem(last=False)  # the least recently used
            pool = self.pools[nbytes] = []
        else:
            self.pools.move_to_end(nbytes)
        for buffer in pool:
            # free: referenced by the pool, this loop and the call only
            if getrefcount(buffer) <= 3:
                break
        else:
            if len(pool) >= self.per_size:
                return None
            buffer = numpy.empty(nbytes, numpy.uint8)
            pool.append(buffer)
        buffer[...] = value.reshape(-1).view(numpy.uint8)
        return buffer


def send_parts(socket: Any, parts: list[Any], flags: int = 0,
               buffers: SendBuffers | None = None) -> None:
    """Send ``parts`` as one message; buffers of 64 KiB and more are not
    copied (pyzmq copies smaller ones), unless given as ``wire.Copied``:
    those are copied into ``buffers`` if given, else by pyzmq."""
    send, last = socket.send, len(parts) - 1
    flags = int(flags)  # zmq.NOBLOCK is an IntFlag: `|` on it costs ~1 us
    for index, part in enumerate(parts):
        more = flags | _SNDMORE if index < last else flags
        if type(part) is Copied:
            pooled = None if buffers is None else buffers.copy(part.buffer)
            if pooled is None:
                send(part.buffer, more, copy=True)
            else:
                send(pooled, more, copy=False)
        else:
            send(part, more, copy=False)


def recv_parts(socket: Any, flags: int = 0) -> list[Any]:
    """The frames of one message (``zmq.Frame``, not copied); with
    ``flags=NOBLOCK``, ``zmq.Again`` if none is waiting."""
    frame = socket.recv(flags, copy=False)
    frames = [frame]
    while frame.more:
        frame = socket.recv(copy=False)
        frames.append(frame)
    return frames
