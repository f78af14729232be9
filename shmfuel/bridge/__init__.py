"""The ZeroMQ bridge: serve a stream over TCP, read it from another machine.

``wire`` (pure) defines the messages; ``server`` runs a stream behind a
ROUTER socket; ``client`` is :class:`ServerDataStream`. pyzmq is optional
(``pip install 'shmfuel[zmq]'``): these modules import without it and
raise ``ImportError`` naming the fix when used.
"""

from __future__ import annotations

from typing import Any

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


def send_parts(socket: Any, parts: list[Any], flags: int = 0) -> None:
    """Send ``parts`` as one message; buffers of 64 KiB and more are not
    copied (pyzmq copies smaller ones), unless given as ``wire.Copied``."""
    send, last = socket.send, len(parts) - 1
    for index, part in enumerate(parts):
        more = flags | _SNDMORE if index < last else flags
        if type(part) is Copied:
            send(part.buffer, more, copy=True)
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
