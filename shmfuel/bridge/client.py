"""ServerDataStream: a data stream read from one or more data servers.

Each server gets a DEALER socket. ``get_epoch_iterator()`` asks every
server for the next epoch (the server skips what is left of the previous
one); batches arrive in order, tagged with their epoch, and anything from
an older epoch is dropped. With several servers (``servers=``), server
``k`` of ``n`` serves share ``k`` of the requests and batch ``g`` of an
epoch comes from server ``g % n``, so the merged epoch is exactly the one
a single server would give. Flow control is by credits: at most ``hwm``
batches are in flight per server, and one credit goes back for each batch
taken (``hwm // 2`` to a message). A server that sends nothing, not even a
heartbeat, for ``timeout`` seconds raises :class:`BridgeTimeoutError`.
"""

from __future__ import annotations

import builtins
import collections
import logging
import os
import weakref
from typing import Any

from shmfuel import _forks
from shmfuel._checks import flag, seconds, whole
from shmfuel.bridge import recv_parts, require_zmq, send_parts, wire
from shmfuel.exceptions import RemoteTraceback, ShmfuelError
from shmfuel.iterator import DataIterator
from shmfuel.streams import AbstractDataStream

log = logging.getLogger("shmfuel.bridge")
_BUNDLE_HEAD_SIZE = wire.BUNDLE_HEAD.size


class BridgeTimeoutError(ShmfuelError, TimeoutError):
    """A data server did not answer in time."""


class ServerError(ShmfuelError):
    """An exception raised in a data server's pipeline.

    Attributes
    ----------
    exc_type : str
        The name of the exception's type on the server.

    """

    def __init__(self, message: str, exc_type: str) -> None:
        super().__init__(message)
        self.exc_type = exc_type


def _remote_exception(header: dict[str, Any], address: str) -> BaseException:
    name, message = str(header.get("exc_type")), str(header.get("message"))
    builtin = getattr(builtins, name, None)
    exc: BaseException
    if (isinstance(builtin, type) and issubclass(builtin, Exception)
            and builtin.__init__ is not None):
        try:
            exc = builtin(message)
        except Exception:
            exc = ServerError(f"{name}: {message}", name)
    else:
        exc = ServerError(f"the server at {address} raised {name}: {message}",
                          name)
    exc.__cause__ = RemoteTraceback(str(header.get("traceback", "")))
    return exc


class _Connection:
    def __init__(self, context: Any, zmq: Any, host: str, port: int,
                 curve_server_key: bytes | None, timeout: float,
                 hwm: int) -> None:
        self.zmq = zmq
        self.address = f"tcp://{host}:{port}"
        self.timeout = timeout
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        # a blocking send or receive gives up after ``timeout`` (zmq.Again)
        self.socket.setsockopt(zmq.SNDTIMEO, int(timeout * 1000))
        self.socket.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
        if curve_server_key is not None:
            public, secret = zmq.curve_keypair()
            self.socket.curve_serverkey = curve_server_key
            self.socket.curve_publickey = public
            self.socket.curve_secretkey = secret
        self.socket.connect(self.address)
        self.owed = 0  # credits to give back
        # Credits go back half of hwm at a time: each message costs both
        # ends several microseconds. The server then always holds or has
        # sent at least hwm - owed > 0 of them, so a client waiting with
        # fewer owed cannot deadlock it.
        self.credit_every = max(1, hwm // 2)
        self.credit_messages: dict[int, list[Any]] = {}
        self.bundled: collections.deque[Any] = collections.deque()

    def give_credits(self) -> None:
        """Send the credits owed."""
        message = self.credit_messages.get(self.owed)
        if message is None:
            message = self.credit_messages[self.owed] = wire.encode(
                wire.CREDIT, credits=self.owed)
        self.send_frames(message)
        self.owed = 0

    def send(self, kind: str, flags: int = 0, **fields: Any) -> None:
        self.send_frames(wire.encode(kind, **fields), flags)

    def send_frames(self, frames: list[Any], flags: int = 0) -> None:
        try:
            send_parts(self.socket, frames, flags)
        except self.zmq.Again:
            raise BridgeTimeoutError(
                f"could not send to the data server at {self.address} within "
                f"{self.timeout} s: is it running and reachable?") from None


def _hang_up(zmq: Any, context: Any, connections: list[_Connection]) -> None:
    for connection in connections:
        try:
            connection.send(wire.BYE, zmq.NOBLOCK)
        except Exception:
            pass
        connection.socket.close(0)
    context.term()


def _address(host: Any, port: Any) -> tuple[str, int]:
    """A server's (host, port), checked before anything connects."""
    if not isinstance(host, str) or not host.strip("[]"):
        raise ValueError(f"a server's host must be a name or an address such "
                         f"as '127.0.0.1', got {host!r}")
    number = (int(port) if isinstance(port, str) and port.isdigit()
              else int(port) if whole(port) else 0)
    if not 0 < number < 65536:
        raise ValueError(f"a server's port must be a number from 1 to 65535 "
                         f"(the server's --port), got {port!r}")
    return host, number


def _parse_address(value: Any) -> tuple[str, int]:
    if isinstance(value, str):
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"server address {value!r} is not 'host:port'")
        return _address(host.strip("[]"), int(port))
    try:
        host, port = value
    except (TypeError, ValueError):
        raise ValueError(f"server address {value!r} is neither 'host:port' "
                         "nor a (host, port) pair") from None
    return _address(host, port)


class ServerDataStream(AbstractDataStream):
    """A stream whose data comes from :func:`~shmfuel.server.start_server`.

    Parameters
    ----------
    sources : tuple of str
        Names for the sources; there must be as many as the server has
        (names that differ from the server's rename them, with a warning).
    produces_examples : bool, optional
        Learned from the server if not given.
    host, port : str, int
        Where the server listens.
    hwm : int
        Batches in flight per server.
    axis_labels : dict, optional
        Learned from the server if not given.
    timeout : float
        Seconds without any message (servers send heartbeats while they
        work) before :class:`BridgeTimeoutError`.
    servers : list of 'host:port' or (host, port), optional
        Read several servers started with ``shard=(k, n)``, merged in
        order; overrides ``host`` and ``port``.
    allow_pickle : bool
        Accept pickled values (trusted networks only).
    copy : bool
        Hand out arrays that own their memory (otherwise arrays are views
        of the received message).
    curve_server_key : bytes, optional
        The server's CurveZMQ public key, for an encrypted connection.

    The connection is made on first use, and dropped when pickled (an
    unpickled stream reconnects and starts a new epoch).

    """

    def __init__(self, sources: Any, produces_examples: bool | None = None,
                 host: str = "localhost", port: int = 5557, hwm: int = 10,
                 axis_labels: dict[str, Any] | None = None,
                 timeout: float = 30.0, *, servers: Any = None,
                 allow_pickle: bool = False, copy: bool = False,
                 curve_server_key: bytes | None = None) -> None:
        if isinstance(sources, str) or not all(isinstance(s, str)
                                               for s in sources):
            raise TypeError(f"sources must be a tuple of names, got {sources!r}")
        if not sources:
            raise ValueError("sources must name at least one source, as many "
                             "as the served stream has")
        if servers is not None and not servers:
            raise ValueError("servers is empty: give at least one 'host:port', "
                             "or leave it out and use host= and port=")
        if hwm < 1:
            raise ValueError(f"hwm must be at least 1, got {hwm}")
        timeout = seconds("timeout", timeout)
        allow_pickle = flag("allow_pickle", allow_pickle)
        copy = flag("copy", copy)
        super().__init__(axis_labels=axis_labels)
        self._sources = tuple(sources)
        self._given_examples = produces_examples
        self._given_labels = axis_labels
        self.addresses = ([_parse_address(s) for s in servers] if servers
                          else [_address(host, port)])
        self.hwm = hwm
        self.timeout = timeout
        self.allow_pickle = allow_pickle
        self.copy = copy
        self.curve_server_key = curve_server_key
        self.connected = False
        self._epoch = -1
        self._position = 0
        self._epoch_done = True
        self._broken: BaseException | None = None
        self._epoch_error: BaseException | None = None

    # -- connection ----------------------------------------------------------
    def connect(self) -> None:
        """Connect to the servers and learn their streams' metadata."""
        if self.connected:
            return
        zmq = require_zmq()
        self._zmq = zmq
        self._context = zmq.Context()
        self._decoder = wire.BatchDecoder(self.allow_pickle)
        self._connections = [
            _Connection(self._context, zmq, host, port, self.curve_server_key,
                        self.timeout, self.hwm)
            for host, port in self.addresses]
        self.connected = True
        # Garbage collection and interpreter exit close them too.
        self._finalizer = weakref.finalize(self, _hang_up, self._zmq, self._context,
                                           self._connections)
        self._owner = os.getpid()
        _forks.own(self, ServerDataStream._inherited)
        try:
            metadata = []
            for connection in self._connections:
                connection.send(wire.HELLO)
                header, _ = self._receive(connection, {wire.WELCOME, wire.ERROR})
                if header["type"] == wire.ERROR:
                    raise _remote_exception(header, connection.address)
                metadata.append(header)
            self._check(metadata)
        except BaseException:
            self.close()
            raise
        self._epoch, self._position, self._epoch_done = -1, 0, True

    def _check(self, metadata: list[dict[str, Any]]) -> None:
        first = metadata[0]
        theirs = tuple(first.get("sources") or ())
        if len(theirs) != len(self._sources):
            raise ValueError(f"the server at {self._connections[0].address} "
                             f"has {len(theirs)} sources {theirs}, but "
                             f"{len(self._sources)} names were given: "
                             f"{self._sources}")
        if theirs != self._sources:
            log.warning("the server's sources %s are read as %s", theirs,
                        self._sources)
        n = len(metadata)
        for k, (meta, connection) in enumerate(zip(metadata, self._connections)):
            shard = meta.get("shard")
            expected = [k, n] if n > 1 else None
            if shard != expected and not (n == 1 and shard is None):
                raise ValueError(
                    f"the server at {connection.address} serves share {shard}, "
                    f"but it is server {k} of {n} here: start server k with "
                    f"shard=(k, {n}), in the order given to servers=")
            if tuple(meta.get("sources") or ()) != theirs:
                raise ValueError("the servers serve different sources")
        heartbeat = max(float(meta.get("heartbeat") or 0) for meta in metadata)
        if self.timeout <= heartbeat:
            raise ValueError(f"timeout={self.timeout} s is not longer than the "
                             f"server's heartbeat interval ({heartbeat} s): a "
                             "slow batch would look like a dead server")
        self._server_examples = bool(first.get("produces_examples"))
        labels = first.get("axis_labels")
        if self._given_labels is None and labels:
            renamed = dict(zip(theirs, self._sources))
            self.axis_labels = {renamed.get(k, k): tuple(v) if v is not None
                                else None for k, v in labels.items()}

    def _frames(self, connection: _Connection) -> list[Any]:
        """The next message's frames (one batch of a bundle at a time),
        waiting up to ``timeout``."""
        if connection.bundled:
            return [connection.bundled.popleft()]
        if connection.owed >= connection.credit_every:  # dropped batches'
            connection.give_credits()
        try:  # one blocking call: a failed NOBLOCK try and a poll cost ~6 us
            frames = recv_parts(connection.socket)
        except self._zmq.Again:  # RCVTIMEO: nothing within the timeout
            raise BridgeTimeoutError(
                f"no answer from the data server at {connection.address} "
                f"within {connection.timeout} s: is it running and reachable? "
                "(python -m shmfuel serve module:factory --port ...)"
            ) from None
        if len(frames) > 1 and len(frames[0]) == _BUNDLE_HEAD_SIZE:
            try:
                batches = wire.unbundle(frames)
            except wire.WireError as exc:
                raise self._malformed(connection, exc) from None
            if batches is not None:
                connection.bundled.extend(batches[1:])
                return batches[:1]
        return frames

    def _receive(self, connection: _Connection, expected: set[str],
                 frames: list[Any] | None = None
                 ) -> tuple[dict[str, Any], list[Any]]:
        if frames is None:
            frames = self._frames(connection)
        try:
            return wire.decode(frames, expected)
        except wire.WireError as exc:
            raise self._malformed(connection, exc) from None

    @staticmethod
    def _epoch_of(connection: _Connection, header: dict[str, Any]) -> int:
        epoch = header.get("epoch")
        if not isinstance(epoch, int):
            raise wire.WireError(f"malformed message from {connection.address}: "
                                 f"{header['type']} without an epoch")
        return epoch

    @staticmethod
    def _malformed(connection: _Connection, exc: Exception) -> wire.WireError:
        return wire.WireError(f"malformed message from {connection.address}: "
                              f"{exc}")

    def close(self) -> None:
        """Say goodbye, close the sockets and the context. Idempotent."""
        if not self.connected:
            return
        self.connected = False
        _forks.disown(self)
        self._finalizer()

    def _inherited(self) -> None:
        """In a forked child: the sockets and their context are the
        parent's; leave them alone and refuse to read."""
        if self.connected:
            self._finalizer.detach()
            self.connected = False
        self._broken = ShmfuelError(
            f"this ServerDataStream was connected in process {self._owner}; "
            f"process {os.getpid()} is a fork of it and cannot use its "
            "sockets (a ZeroMQ context does not survive a fork). Make a "
            "ServerDataStream in this process (a pickled copy connects anew)")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_zmq", "_context", "_connections", "_finalizer",
                    "_decoder", "_owner"):
            state.pop(key, None)
        state["connected"] = False
        return state

    # -- the stream ----------------------------------------------------------
    @property
    def produces_examples(self) -> bool:
        if self._given_examples is not None:
            return bool(self._given_examples)
        self.connect()
        return self._server_examples

    @produces_examples.setter
    def produces_examples(self, value: bool) -> None:
        self._given_examples = value

    def get_epoch_iterator(self, as_dict: bool = False) -> Any:
        """Start the next epoch on every server; skip the rest of this one."""
        as_dict = flag("as_dict", as_dict)
        if self._broken is not None:
            raise self._broken
        self.connect()
        self._epoch += 1
        self._position = 0
        self._epoch_done = False
        self._epoch_error = None
        for connection in self._connections:
            credits = self.hwm if self._epoch == 0 else 0
            connection.send(wire.EPOCH, epoch=self._epoch, credits=credits)
        return DataIterator(self, None, as_dict=as_dict)

    def next_epoch(self) -> None:
        """Nothing to do: each epoch iterator starts a new epoch."""

    def reset(self) -> None:
        """Nothing to do: each epoch iterator starts a new epoch."""

    def _next_message(self, connection: _Connection
                      ) -> tuple[dict[str, Any], list[Any]]:
        """The next message of the current epoch; batches of other epochs
        are dropped.

        Credits go back half of ``hwm`` at a time (see
        ``_Connection``), those of dropped batches too.
        """
        while True:
            header, frames = self._receive(connection, wire.SERVER_TYPES)
            kind = header["type"]
            if kind == wire.HEARTBEAT:
                continue
            epoch = self._epoch_of(connection, header)
            if kind == wire.BATCH and epoch != self._epoch:
                connection.owed += 1
            if epoch < self._epoch and kind != wire.ERROR:
                continue
            return header, frames

    def get_data(self, request: Any = None) -> Any:
        if (request is not None or self._epoch_done or self._broken is not None
                or not self.connected):
            self._not_ready(request)
        connections = self._connections
        connection = connections[self._position % len(connections)]
        try:
            while True:  # the hot path: a batch of this epoch
                frames = self._frames(connection)
                try:
                    batch = self._decoder.batch(frames)
                except wire.WireError as exc:
                    raise self._malformed(connection, exc) from None
                if batch is None:
                    self._control(connection, frames)
                    continue
                epoch, _, values = batch
                if epoch == self._epoch:
                    break
                connection.owed += 1  # dropped: from an abandoned epoch
            if len(values) != len(self._sources):
                raise wire.WireError(
                    f"{connection.address} sent {len(values)} sources, "
                    f"expected {len(self._sources)}")
            connection.owed += 1
            if connection.owed >= connection.credit_every:
                connection.give_credits()
            self._position += 1
        except (BridgeTimeoutError, wire.WireError) as exc:
            self._broken = exc
            raise
        if self.copy:
            import numpy
            values = [v.copy() if isinstance(v, numpy.ndarray) else v
                      for v in values]
        return tuple(values)

    def _not_ready(self, request: Any) -> None:
        if request is not None:
            raise ValueError(f"ServerDataStream takes no request, got {request!r}")
        if self._broken is not None:
            raise self._broken
        if not self.connected:
            raise ShmfuelError("call get_epoch_iterator() first")
        if self._epoch_error is not None:
            raise self._epoch_error
        raise StopIteration

    def _control(self, connection: _Connection, frames: list[Any]) -> None:
        """Handle a message other than a batch where a batch was expected:
        return for a heartbeat or an older epoch's end; end this epoch, or
        raise the server's error."""
        try:
            header, _ = self._receive(connection, wire.SERVER_TYPES, frames)
            kind = header["type"]
            if kind == wire.HEARTBEAT:
                return
            if (self._epoch_of(connection, header) < self._epoch
                    and kind != wire.ERROR):
                return
            if kind == wire.ERROR:
                self._epoch_done = True
                self._epoch_error = _remote_exception(header, connection.address)
                raise self._epoch_error
            if kind != wire.END:
                raise wire.WireError(f"unexpected {kind} message from "
                                     f"{connection.address}")
            self._epoch_done = True
            for other in self._connections:
                if other is not connection:
                    header, _ = self._next_message(other)
                    if header["type"] == wire.ERROR:
                        raise _remote_exception(header, other.address)
                    if header["type"] != wire.END:
                        raise ShmfuelError(
                            f"the server at {other.address} still had "
                            "batches when the epoch ended: the servers' "
                            "pipelines are not per-batch")
            raise StopIteration
        except (BridgeTimeoutError, wire.WireError) as exc:
            self._broken = exc
            raise


__all__ = ["BridgeTimeoutError", "ServerDataStream", "ServerError"]
