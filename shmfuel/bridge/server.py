"""The data server: a stream behind a ZeroMQ ROUTER socket.

Threads and data flow::

    client DEALER  <-tcp->  ROUTER (I/O thread: the caller of start_server)
                              |  hello/epoch/credit/bye, heartbeats
                              |  inproc PAIR, frames passed without copies
                            producer thread: runs the stream, encodes batches

One client is served at a time: a ``hello`` from a new client takes the
server over (the previous client gets an error), so restarting a trainer
never waits for the old one to time out. For the client being served the
producer thread sends batches only while the client has granted credits
(at most ``hwm`` outstanding), always in order, each tagged with its epoch;
``epoch e`` from the client skips what is left of an older epoch, and the
producer starts epoch ``e + 1`` on its own as soon as ``e`` ends (never
further ahead). While the producer works on a slow batch, the I/O thread
sends heartbeats, so the client can tell slow from dead.

An exception in the stream is sent to the client (type, message,
traceback) after the batches before it, and the server keeps serving: the
next ``epoch`` request starts a fresh epoch iterator of the stream.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from typing import Any

from shmfuel.bridge import require_zmq, wire

log = logging.getLogger("shmfuel.server")

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class _Control:
    """What the I/O thread tells the producer thread (under ``cond``)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.generation = 0       # one per client session
        self.wanted: int | None = None  # the epoch the client is on
        self.credits = 0
        self.stop = False


class _Producer(threading.Thread):
    def __init__(self, stream: Any, context: Any, endpoint: str,
                 control: _Control, allow_pickle: bool) -> None:
        super().__init__(name="shmfuel-server-producer", daemon=True)
        self.stream = stream
        self.control = control
        self.allow_pickle = allow_pickle
        zmq = require_zmq()
        self.pipe = context.socket(zmq.PAIR)
        self.pipe.setsockopt(zmq.LINGER, 0)
        self.pipe.connect(endpoint)

    def emit(self, generation: int, frames: list[Any]) -> None:
        if self.control.stop:
            return  # shutting down; the pipe may be closed already
        self.pipe.send_multipart([str(generation).encode()] + frames,
                                 copy=False)

    def _ready(self, generation: int, epoch: int, phase: str) -> bool:
        control = self.control
        if control.stop or control.generation != generation:
            return True
        if control.wanted is None:
            return False
        return (control.wanted > epoch
                or (phase == "producing" and control.credits > 0)
                or (phase == "ended" and epoch <= control.wanted))

    def run(self) -> None:
        """Phases of an epoch: producing -> ended (END sent) or failed
        (ERROR sent). An ended epoch is followed by the next one at once, a
        failed one only when the client asks for a newer epoch."""
        control = self.control
        generation, epoch, phase, seq = -1, -1, "failed", 0
        iterator: Any = None
        try:
            while True:
                with control.cond:
                    while not self._ready(generation, epoch, phase):
                        control.cond.wait(0.5)
                    if control.stop:
                        return
                    if control.generation != generation:
                        generation, epoch, phase = control.generation, -1, "failed"
                        continue
                    if control.wanted is not None and control.wanted > epoch:
                        epoch, phase = control.wanted, "open"
                    elif phase == "ended":
                        epoch, phase = epoch + 1, "open"
                if phase == "open":
                    seq = 0
                    try:
                        iterator = self.stream.get_epoch_iterator()
                        phase = "producing"
                    except Exception as exc:
                        self.emit(generation, self.error(exc, epoch))
                        phase = "failed"
                    continue
                try:
                    batch = next(iterator)
                    frames = wire.encode_batch(epoch, seq, batch,
                                               self.allow_pickle)
                except StopIteration:
                    frames, phase = wire.encode(wire.END, epoch=epoch), "ended"
                except Exception as exc:
                    frames, phase = self.error(exc, epoch), "failed"
                with control.cond:
                    if (control.generation != generation
                            or (control.wanted or 0) > epoch):
                        continue  # the client moved on meanwhile
                    if phase == "producing":
                        control.credits -= 1
                        seq += 1
                self.emit(generation, frames)
        finally:
            self.pipe.close(0)

    @staticmethod
    def error(exc: BaseException, epoch: int) -> list[Any]:
        log.warning("the stream raised %s: %s", type(exc).__name__, exc)
        return wire.encode(wire.ERROR, exc_type=type(exc).__name__,
                           message=str(exc), epoch=epoch,
                           traceback=traceback.format_exc())


def _stop_on_signals(stop: threading.Event) -> tuple[Any, Any]:
    """Make SIGINT and SIGTERM set ``stop`` and wake the serving loop.

    Returns what restores the handlers, and a socket that becomes readable
    on such a signal (for the loop's poller; None off the main thread).
    """
    import signal
    import socket
    if threading.current_thread() is not threading.main_thread():
        return (lambda: None), None
    wake, waker = socket.socketpair()
    waker.setblocking(False)

    def handler(*_: Any) -> None:
        stop.set()
        try:
            waker.send(b"\0")
        except OSError:
            pass
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handler)

    def restore() -> None:
        for signum, old in previous.items():
            signal.signal(signum, old)
        wake.close()
        waker.close()
    return restore, wake


class _Session:
    def __init__(self, identity: bytes, generation: int) -> None:
        self.identity = identity
        self.generation = generation
        self.last_sent = time.monotonic()


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
                 stop: threading.Event | None = None) -> None:
    """Serve ``data_stream`` to a :class:`ServerDataStream` over TCP.

    Blocks until Ctrl-C, SIGTERM (when called from the main thread, both
    only set a flag while it serves) or ``stop``; then it stops its
    producer thread, closes its sockets and context, and returns.

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
    zmq = require_zmq()
    if shard is not None:
        k, n = shard
        if not (isinstance(k, int) and isinstance(n, int) and 0 <= k < n):
            raise ValueError(f"shard must be (k, n) with 0 <= k < n, got {shard}")
        import pickle

        import cloudpickle

        from shmfuel.prefetch.sharding import shard as shard_stream
        data_stream = pickle.loads(cloudpickle.dumps(data_stream))
        shard_stream(data_stream, k, n)
    prefetcher = None
    if workers > 1:
        from shmfuel.prefetch import Prefetcher
        prefetcher = data_stream = Prefetcher(data_stream, workers=workers,
                                              hwm=max(hwm, workers))
    if heartbeat <= 0:
        raise ValueError(f"heartbeat must be positive, got {heartbeat}")
    metadata = _metadata(data_stream, shard, allow_pickle)
    metadata["heartbeat"] = heartbeat
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    if curve_keypair is not None:
        router.curve_server = True
        router.curve_publickey, router.curve_secretkey = curve_keypair
    pipe = context.socket(zmq.PAIR)
    pipe.setsockopt(zmq.LINGER, 0)
    endpoint = f"inproc://shmfuel-server-{id(pipe)}"
    pipe.bind(endpoint)
    control = _Control()
    producer = _Producer(data_stream, context, endpoint, control, allow_pickle)
    # Signals only set a flag: a KeyboardInterrupt raised at an arbitrary
    # point could leave the producer's lock held and the context unclosable.
    stop = stop if stop is not None else threading.Event()
    restore, wake = _stop_on_signals(stop)
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
        producer.start()
        if ready is not None:
            ready.port = int(bound.rsplit(":", 1)[1])  # type: ignore[attr-defined]
            ready.set()
        _serve(zmq, router, pipe, control, metadata, heartbeat, stop, wake)
    finally:
        restore()
        with control.cond:
            control.stop = True
            control.cond.notify_all()
        if producer.is_alive():
            producer.join(5)
        if producer.is_alive():  # stuck in the stream's next()
            log.warning("the producer thread is still busy; closing anyway")
            producer.pipe.close(0)
        router.close(0)
        pipe.close(0)
        context.term()
        if prefetcher is not None:
            prefetcher.close()
        log.info("server stopped")


def _serve(zmq: Any, router: Any, pipe: Any, control: _Control,
           metadata: dict[str, Any], heartbeat: float,
           stop: threading.Event | None, wake: Any = None) -> None:
    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)
    poller.register(pipe, zmq.POLLIN)
    if wake is not None:  # a signal: stop at once, not at the next timeout
        poller.register(wake, zmq.POLLIN)
    session: _Session | None = None

    def send(frames: list[Any]) -> bool:
        nonlocal session
        if session is None:
            return False
        try:
            router.send_multipart([session.identity] + frames, copy=False)
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            log.info("client went away; waiting for the next one")
            end_session()
            return False
        session.last_sent = time.monotonic()
        return True

    def end_session() -> None:
        nonlocal session
        session = None
        with control.cond:
            control.generation += 1
            control.wanted = None
            control.credits = 0
            control.cond.notify_all()

    while stop is None or not stop.is_set():
        events = dict(poller.poll(int(heartbeat * 1000 / 2)))
        if router in events:
            while True:
                try:
                    identity, *frames = router.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    header, _ = wire.decode(frames, wire.CLIENT_TYPES)
                except wire.WireError as exc:
                    log.warning("ignoring a malformed message: %s", exc)
                    try:
                        router.send_multipart([identity] + wire.encode(
                            wire.ERROR, exc_type="WireError", epoch=-1,
                            message=f"malformed message: {exc}", traceback=""))
                    except zmq.ZMQError:
                        pass
                    continue
                kind = header["type"]
                if kind == wire.HELLO:
                    if session is not None and session.identity != identity:
                        send(wire.encode(wire.ERROR, exc_type="ConnectionError",
                                         epoch=-1, traceback="",
                                         message="another client took over "
                                                 "this server"))
                        log.info("a new client takes over")
                    end_session()
                    session = _Session(identity, control.generation)
                    send(wire.encode(wire.WELCOME, **metadata))
                elif session is None or identity != session.identity:
                    continue  # a client that was taken over
                elif kind == wire.EPOCH:
                    with control.cond:
                        control.wanted = max(int(header.get("epoch", 0)),
                                             control.wanted or 0)
                        control.credits += int(header.get("credits", 0))
                        control.cond.notify_all()
                elif kind == wire.CREDIT:
                    with control.cond:
                        control.credits += int(header.get("credits", 0))
                        control.cond.notify_all()
                elif kind == wire.BYE:
                    end_session()
        if pipe in events:
            while True:
                try:
                    generation, *frames = pipe.recv_multipart(zmq.NOBLOCK,
                                                              copy=False)
                except zmq.Again:
                    break
                if session is not None and int(generation.bytes) == session.generation:
                    send(frames)
        if (session is not None and control.credits > 0
                and time.monotonic() - session.last_sent >= heartbeat):
            send(wire.encode(wire.HEARTBEAT))
