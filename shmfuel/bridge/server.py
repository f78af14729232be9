"""The data server: a stream behind a ZeroMQ ROUTER socket.

Threads and data flow::

    client DEALER  <-tcp->  ROUTER   the serving thread (the caller of
                                     start_server): runs the stream, encodes
                                     and sends its batches, and handles
                                     hello/epoch/credit/bye between batches
                            heartbeat thread: while the stream works on a
                            batch, sends heartbeats on the same socket

One thread does the work of a batch from ``next()`` to the socket: no
hand-over between threads per batch. Batches that the stream makes fast
and that fit in one frame are sent in bundles, up to ``BURST`` to a
message; a slow one is sent at once, after those before it. The serving thread owns the socket
under ``_Server.lock`` and lets go of it only while the stream runs
(``_Server.call``); the heartbeat thread takes it then, without waiting
(a locked socket means the serving thread is sending anyway), so a slow
batch is not mistaken for a dead server.

One client is served at a time: a ``hello`` from a new client takes the
server over (the previous client gets an error), so restarting a trainer
never waits for the old one to time out; it is answered once the batch
being made is done. For the client being served, batches are sent only
while the client has granted credits (at most ``hwm`` outstanding), always
in order, each tagged with its epoch; ``epoch e`` from the client skips
what is left of an older epoch, and the server starts epoch ``e + 1`` on
its own as soon as ``e`` ends (never further ahead).

An exception in the stream is sent to the client (type, message,
traceback) after the batches before it, and the server keeps serving: the
next ``epoch`` request starts a fresh epoch iterator of the stream.

Stopping: SIGINT and SIGTERM (when serving from the main thread) set
``stop`` and wake the loop, whichever thread the kernel delivers them to
(Python's wakeup fd); if the stream is running they also interrupt it
there, so a slow batch does not delay the exit. ``stop`` set from
another thread is seen between batches.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import traceback
from typing import Any

from shmfuel._checks import flag, seconds, whole
from shmfuel._refcounts import check_build
from shmfuel.bridge import SendBuffers, recv_parts, require_zmq, send_parts, wire
from shmfuel.prefetch.sharding import per_batch

log = logging.getLogger("shmfuel.server")

LOOPBACK = ("127.0.0.1", "localhost", "::1")
BURST = 8  # batches sent before looking for the client's messages
SLOW_S = 20e-6  # a batch made slower than this is sent at once


# what the stream's code may raise that goes to the client as its error:
# also a sys.exit() in the pipeline, which would otherwise end the server
# while its clients wait out their timeout without a word
PIPELINE_ERRORS = (Exception, SystemExit)


class _Interrupted(BaseException):
    """A stop signal arrived while the stream was running."""


def _stop_on_signals(stop: threading.Event,
                     in_stream: Any) -> tuple[Any, Any]:
    """Make SIGINT and SIGTERM set ``stop`` and wake the serving loop, and
    interrupt the stream if ``in_stream()``.

    Returns what restores the handlers, and a socket that becomes readable
    on such a signal (for the loop's poller; None off the main thread).
    """
    import socket
    if threading.current_thread() is not threading.main_thread():
        return (lambda: None), None
    wake, waker = socket.socketpair()
    waker.setblocking(False)

    def handler(*_: Any) -> None:
        stop.set()
        if in_stream():
            raise _Interrupted
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handler)
    # The handler runs in the main thread, but the kernel may deliver the
    # signal to any thread that does not block it (pyzmq's garbage thread,
    # a caller's thread), leaving the main thread in its poll. Python's
    # wakeup fd is written at delivery, in whichever thread: the poll
    # returns, and the handler runs.
    old_fd = signal.set_wakeup_fd(waker.fileno(), warn_on_full_buffer=False)

    def restore() -> None:
        signal.set_wakeup_fd(old_fd)
        for signum, old in previous.items():
            signal.signal(signum, old)
        wake.close()
        waker.close()
    return restore, wake


def _metadata(stream: Any, shard: tuple[int, int] | None,
              allow_pickle: bool) -> dict[str, Any]:
    labels = stream.axis_labels
    return {"sources": list(stream.sources),
            "produces_examples": bool(stream.produces_examples),
            "axis_labels": ({k: list(v) if v is not None else None
                             for k, v in labels.items()} if labels else None),
            "shard": list(shard) if shard else None,
            "allow_pickle": allow_pickle}


def start_server(data_stream: Any, port: int = 5557, hwm: int = 10,
                 host: str = "127.0.0.1", *, workers: int = 1,
                 shard: tuple[int, int] | None = None,
                 allow_pickle: bool = False,
                 curve_keypair: tuple[bytes, bytes] | None = None,
                 heartbeat: float = 1.0,
                 ready: threading.Event | None = None,
                 stop: threading.Event | None = None,
                 worker_init_fn: Any = None) -> None:
    """Serve ``data_stream`` to a :class:`ServerDataStream` over TCP.

    Blocks until Ctrl-C or SIGTERM (when called from the main thread; they
    interrupt the stream only while it makes a batch) or ``stop`` (seen
    between batches); then it closes its socket and context, and returns.

    Parameters
    ----------
    data_stream : AbstractDataStream
        The stream to serve.
    port : int
        TCP port; 0 picks a free one (logged, and set on ``ready.port``).
    hwm : int
        Accepted for compatibility with Fuel; the client's ``hwm`` decides
        how many batches may be in flight.
    host : str
        Interface to bind. Loopback by default; anything else is logged as
        a warning, since without ``curve_keypair`` anyone who can reach the
        port can read the data.
    workers : int
        With more than 1, the stream runs in a
        :class:`~shmfuel.Prefetcher` with that many producer processes.
    worker_init_fn : callable, optional
        With ``workers > 1``: the Prefetcher's ``worker_init_fn``, called in
        each producer with its index before its stream starts.
    shard : (k, n), optional
        Serve only share ``k`` of ``n`` of the stream's requests, for a
        client that reads ``n`` servers (see ``ServerDataStream``'s
        ``servers``).
    allow_pickle : bool
        Send values that have no safe encoding pickled. The client must opt
        in too; trusted networks only.
    curve_keypair : (public, secret), optional
        Z85 CurveZMQ keys (``zmq.curve_keypair()``); clients then need the
        public key and the traffic is encrypted.
    heartbeat : float
        Seconds between heartbeats while the client waits.
    ready, stop : threading.Event, optional
        Set once listening; checked to stop serving (for embedding).

    """
    if not whole(port) or not 0 <= port < 65536:
        raise ValueError(f"port must be a number from 1 to 65535, or 0 for any "
                         f"free port, got {port!r}")
    if not isinstance(host, str) or not host.strip("[]"):
        raise ValueError(f"host must be an interface to bind, such as "
                         f"'127.0.0.1' or '0.0.0.0', got {host!r}")
    for name, value in (("workers", workers), ("hwm", hwm)):
        if not whole(value) or value < 1:
            raise ValueError(f"{name} must be an int of at least 1, got {value!r}")
    if worker_init_fn is not None and workers == 1:
        raise ValueError("worker_init_fn runs in producer processes, which the "
                         "server starts only with workers > 1: pass workers=2 "
                         "or more, or set this process up before start_server")
    zmq = require_zmq()
    check_build("the data server")
    sharded = None  # this server's share of the requests, if it has one
    if shard is not None:
        k, n = shard
        if not (isinstance(k, int) and isinstance(n, int) and 0 <= k < n):
            raise ValueError(f"shard must be (k, n) with 0 <= k < n, got {shard}")
        import pickle

        import cloudpickle

        from shmfuel.prefetch.sharding import shard as shard_stream
        data_stream = pickle.loads(cloudpickle.dumps(data_stream))
        sharded = shard_stream(data_stream, k, n)
    heartbeat = seconds("heartbeat", heartbeat)
    allow_pickle = flag("allow_pickle", allow_pickle)
    prefetcher = None
    if workers > 1:  # each producer then checks its own share
        sharded = None
        from shmfuel.prefetch import Prefetcher
        prefetcher = data_stream = Prefetcher(data_stream, workers=workers,
                                              hwm=max(hwm, workers),
                                              worker_init_fn=worker_init_fn)
    metadata = _metadata(data_stream, shard, allow_pickle)
    metadata["heartbeat"] = heartbeat
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.setsockopt(zmq.SNDHWM, 0)  # credits bound what is queued
    if curve_keypair is not None:
        router.curve_server = True
        router.curve_publickey, router.curve_secretkey = curve_keypair
    stop = stop if stop is not None else threading.Event()
    server = _Server(zmq, router, data_stream, metadata, heartbeat,
                     wire.BatchEncoder(allow_pickle, share=prefetcher is not None),
                     stop, sharded)
    restore, wake = _stop_on_signals(stop, lambda: server.in_stream)
    try:
        address = f"tcp://{host}:{port}" if port else f"tcp://{host}:*"
        if ":" in host and not host.startswith("["):
            address = f"tcp://[{host}]:{port or '*'}"
            router.ipv6 = True
        router.bind(address)
        bound = router.getsockopt(zmq.LAST_ENDPOINT).decode()
        if host not in LOOPBACK:
            (log.info if curve_keypair else log.warning)(
                "listening on %s, beyond this machine%s", bound,
                "" if curve_keypair else ": anyone who can reach it can read "
                "the data (pass curve_keypair to encrypt and authenticate)")
        log.info("serving %s on %s", type(data_stream).__name__, bound)
        if ready is not None:
            ready.port = int(bound.rsplit(":", 1)[1])  # type: ignore[attr-defined]
            ready.set()
        server.serve(wake)
    except _Interrupted:
        pass
    finally:
        server.close()
        restore()
        router.close(0)
        context.term()
        if prefetcher is not None:
            prefetcher.close()
        log.info("server stopped")


class _Session:
    def __init__(self, identity: bytes) -> None:
        self.identity = identity
        self.last_sent = time.monotonic()


class _Server:
    """The serving loop's state; see the module doc."""

    def __init__(self, zmq: Any, router: Any, stream: Any,
                 metadata: dict[str, Any], heartbeat: float,
                 encoder: wire.BatchEncoder, stop: threading.Event,
                 sharded: Any = None) -> None:
        self.zmq = zmq
        self.router = router
        self.stream = stream
        self.sharded = sharded  # a share's scheme: its batches are checked
        self.metadata = metadata
        self.heartbeat = heartbeat
        self.encoder = encoder
        self.stop = stop
        self.session: _Session | None = None
        self.wanted: int | None = None  # the epoch the client is on
        self.credits = 0
        self.epoch, self.phase, self.seq = -1, "failed", 0
        self.iterator: Any = None
        self.buffers = SendBuffers()  # for large frames copied on sending
        self.credit_messages: dict[bytes | None, int] = {}  # text: credits
        self.lock = threading.Lock()  # held by whoever uses the router
        self.in_stream = False
        self.closed = threading.Event()
        self.beats = threading.Thread(target=self._beat, daemon=True,
                                      name="shmfuel-server-heartbeat")

    # -- the socket --------------------------------------------------------
    def send(self, frames: list[Any]) -> bool:
        session = self.session
        if session is None:
            return False
        zmq = self.zmq
        try:  # never blocks: no high-water mark (credits bound the queue)
            send_parts(self.router, [session.identity] + frames, zmq.NOBLOCK,
                       self.buffers)
        except zmq.ZMQError as exc:
            if exc.errno not in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                raise
            log.info("client went away; waiting for the next one")
            self.end_session()
            return False
        session.last_sent = time.monotonic()
        return True

    def end_session(self) -> None:
        self.session = None
        self.wanted, self.credits = None, 0
        self.epoch, self.phase, self.iterator = -1, "failed", None

    def receive(self) -> None:
        """Handle every message waiting on the socket."""
        zmq, router = self.zmq, self.router
        events, pollin = zmq.EVENTS, int(zmq.POLLIN)
        while True:
            try:
                identity, *frames = recv_parts(router, zmq.NOBLOCK)
            except zmq.Again:
                return
            self.handle(identity.bytes, frames)
            # a look costs a third of a receive that finds nothing
            if not router.getsockopt(events) & pollin:
                return

    def handle(self, identity: bytes, frames: list[Any]) -> None:
        """Act on one message from a client."""
        # credits come every few batches, always the same few messages:
        # each is parsed once
        text = frames[0].bytes if len(frames) == 1 else None
        credits = self.credit_messages.get(text)
        if credits is not None:
            kind, epoch = wire.CREDIT, 0
        else:
            try:
                header, _ = wire.decode(frames, wire.CLIENT_TYPES)
                kind = header["type"]
                epoch = wire.count(header, "epoch") if kind == wire.EPOCH else 0
                credits = wire.count(header, "credits")
            except wire.WireError as exc:
                log.warning("ignoring a malformed message: %s", exc)
                try:
                    self.router.send_multipart([identity] + wire.encode(
                        wire.ERROR, exc_type="WireError", epoch=-1,
                        message=f"malformed message: {exc}", traceback=""))
                except self.zmq.ZMQError:
                    pass
                return
            if kind == wire.CREDIT and text is not None:
                if len(self.credit_messages) >= 64:
                    self.credit_messages.clear()
                self.credit_messages[text] = credits
        session = self.session
        if kind == wire.HELLO:
            if session is not None and session.identity != identity:
                self.send(wire.encode(
                    wire.ERROR, exc_type="ConnectionError", epoch=-1,
                    traceback="", message="another client took over "
                                          "this server"))
                log.info("a new client takes over")
            self.end_session()
            self.session = _Session(identity)
            self.send(wire.encode(wire.WELCOME, **self.metadata))
        elif session is None or identity != session.identity:
            return  # a client that was taken over
        elif kind == wire.EPOCH:
            self.wanted = max(epoch, self.wanted or 0)
            self.credits += credits
        elif kind == wire.CREDIT:
            self.credits += credits
        elif kind == wire.BYE:
            self.end_session()

    # -- the stream ----------------------------------------------------------
    def can_produce(self) -> bool:
        wanted = self.wanted
        if self.session is None or wanted is None:
            return False
        return (wanted > self.epoch
                or (self.phase == "producing" and self.credits > 0)
                or (self.phase == "ended" and self.epoch <= wanted))

    def call(self, function: Any, *args: Any) -> Any:
        """Run the stream's code; the heartbeat thread may use the socket
        meanwhile."""
        self.in_stream = True
        self.lock.release()
        try:
            return function(*args)
        finally:
            self.lock.acquire()
            self.in_stream = False

    def step(self) -> None:
        """Open the next epoch, or send its next message: a batch, END or
        ERROR. An epoch goes open -> producing -> ended (END sent) or
        failed (ERROR sent); an ended epoch is followed by the next one at
        once, a failed one only when the client asks for a newer one.
        """
        wanted = self.wanted or 0
        if wanted > self.epoch:
            self.epoch, self.phase = wanted, "open"
        elif self.phase == "ended":
            self.epoch, self.phase = self.epoch + 1, "open"
        epoch = self.epoch
        if self.phase == "open":
            self.seq = 0
            try:
                self.iterator = self.call(self.stream.get_epoch_iterator)
                if self.sharded is not None:
                    self.iterator = per_batch(self.iterator, self.sharded)
                self.phase = "producing"
            except PIPELINE_ERRORS as exc:
                self.send(self.error(exc, epoch))
                self.phase = "failed"
            return
        self._produce(epoch)

    def _produce(self, epoch: int) -> None:
        """Send up to ``BURST`` messages of ``epoch`` while credits last:
        the hot loop (the caller then looks at the socket). Batches of one
        frame that the stream made fast go out bundled, one message for
        the burst; a slow one at once, with those before it."""
        call, encode, iterator = self.call, self.encoder.encode, self.iterator
        clock = time.perf_counter
        bundled: list[Any] = []
        for _ in range(BURST):
            started = clock()
            try:
                frames = encode(epoch, self.seq, call(next, iterator))
            except StopIteration:
                frames, self.phase = wire.encode(wire.END, epoch=epoch), "ended"
            except PIPELINE_ERRORS as exc:
                frames, self.phase = self.error(exc, epoch), "failed"
            if self.phase != "producing":  # END or ERROR, after the batches
                if not bundled or self._send_bundle(bundled):
                    self.send(frames)
                return
            self.credits -= 1
            self.seq += 1
            if len(frames) == 1 and clock() - started < SLOW_S:
                bundled.append(frames[0])
                if self.credits <= 0:
                    break
                continue
            if bundled and not self._send_bundle(bundled):
                return
            if not self.send(frames) or self.credits <= 0:
                return
        if bundled:
            self._send_bundle(bundled)

    def _send_bundle(self, bundled: list[Any]) -> bool:
        frames = bundled[:] if len(bundled) == 1 else wire.bundle(bundled)
        bundled.clear()
        return self.send(frames)

    @staticmethod
    def error(exc: BaseException, epoch: int) -> list[Any]:
        log.warning("the stream raised %s: %s", type(exc).__name__, exc)
        return wire.encode(wire.ERROR, exc_type=type(exc).__name__,
                           message=str(exc), epoch=epoch,
                           traceback=traceback.format_exc())

    # -- the loop ------------------------------------------------------------
    def serve(self, wake: Any = None) -> None:
        """Serve until ``stop`` is set."""
        zmq, router, stop = self.zmq, self.router, self.stop
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        wake_fd = None  # the poller names other sockets by their fd
        if wake is not None:  # a signal: stop at once, not at the next timeout
            poller.register(wake, zmq.POLLIN)
            wake_fd = wake.fileno()
        wait_ms = int(self.heartbeat * 1000 / 2)
        events, pollin = zmq.EVENTS, int(zmq.POLLIN)
        self.lock.acquire()
        self.beats.start()
        while not stop.is_set():
            if self.can_produce():
                self.step()
                # credits, a newer epoch, a new client: looked for after
                # every few batches, and whenever there is nothing to do
                if router.getsockopt(events) & pollin:
                    self.receive()
                continue
            readable = dict(poller.poll(wait_ms))
            if wake_fd in readable:  # a signal with a Python handler
                wake.recv(4096)
            if readable:
                self.receive()
            session = self.session
            if (session is not None and self.credits > 0
                    and time.monotonic() - session.last_sent >= self.heartbeat):
                self.send(wire.encode(wire.HEARTBEAT))

    def _beat(self) -> None:
        """While the stream runs, keep the client from timing out."""
        if hasattr(signal, "pthread_sigmask"):  # stop signals: the main thread's
            signal.pthread_sigmask(signal.SIG_BLOCK,
                                   {signal.SIGINT, signal.SIGTERM})
        heartbeat = wire.encode(wire.HEARTBEAT)
        while not self.closed.wait(self.heartbeat / 4):
            if not self.in_stream or not self.lock.acquire(blocking=False):
                continue  # the serving thread has the socket
            try:
                session = self.session
                if (self.in_stream and session is not None and
                        time.monotonic() - session.last_sent >= self.heartbeat):
                    send_parts(self.router, [session.identity] + heartbeat,
                               self.zmq.NOBLOCK)
                    session.last_sent = time.monotonic()
            except self.zmq.ZMQError:
                pass  # the serving thread finds out on its next send
            finally:
                self.lock.release()

    def close(self) -> None:
        """Stop the heartbeat thread; the socket is then the caller's."""
        self.closed.set()
        if self.beats.is_alive():
            self.beats.join()
