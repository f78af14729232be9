"""The ZeroMQ bridge: serve a stream over TCP, read it from another machine.

``wire`` (pure) defines the messages; ``server`` runs a stream behind a
ROUTER socket; ``client`` is :class:`ServerDataStream`. pyzmq is optional
(``pip install 'shmfuel[zmq]'``): these modules import without it and
raise ``ImportError`` naming the fix when used.
"""

from __future__ import annotations

from typing import Any

from shmfuel._extras import require


def require_zmq() -> Any:
    """The ``zmq`` module, or an ImportError that says how to install it."""
    return require("zmq", "zmq", "the shmfuel bridge")
