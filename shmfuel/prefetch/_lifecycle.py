"""Starting and stopping producers: the shutdown protocol, written once.

Start
    The stream is pickled once with cloudpickle (so lambdas and classes
    defined in ``__main__`` travel; with fork, large arrays stay in the
    memory the children inherit; otherwise they are shared out of band,
    see ``_payload``). Each producer gets one end of its own
    ``socketpair`` and, first on it, the pickled stream in a shared
    segment (unless forked: then it is an argument) and its control page
    (see ``control``). The start method is ``fork`` when that is
    safe (Linux, one thread, no CUDA context: start-up in milliseconds),
    else ``forkserver`` (or ``spawn`` where there is no forkserver); pass
    ``start_method`` to choose.

Stop (``close()``, ``with`` exit, garbage collection, interpreter exit)
    1. send MSG_STOP to every producer and close our socket ends, so a
       producer that misses the message sees end-of-file;
    2. join the producers for up to ``GRACE_S`` in all (not each, so that
       eight stuck producers stop as fast as one): producers look at their
       socket between batches and every ``producer.POLL_S`` while waiting;
    3. SIGTERM the producers still alive (one stuck in a slow batch) and
       join them for ``GRACE_S`` in all; then SIGKILL, with a warning, what
       is left.
    Shared memory needs no step: segments have no name (see ``ring``), and
    mappings go away with the last view of them.

Consumer death (SIGKILL, a crash)
    Its socket ends close, so producers see end-of-file; they also check
    that the consumer's pid is alive while they wait. Either way they exit
    within about ``producer.POLL_S`` plus one batch.

Producer death (SIGKILL, segfault, ``os._exit``, the OOM killer)
    The consumer waits on each producer's sentinel together with its
    socket, and raises :class:`~shmfuel.exceptions.ProducerDiedError` with
    the exit code or signal as soon as the death is seen.

Interpreter exit without ``close()``
    An ``atexit`` hook, registered after ``multiprocessing``'s own (so it
    runs first), stops every live pool; otherwise ``multiprocessing`` would
    wait for the producers forever.

A fork of the consumer's process (``os.fork``, a forked worker)
    A fork hook (``shmfuel._forks``) marks every live pool there as
    inherited: none of the steps above runs in the child (closing or
    leaving does not stop the parent's producers), and its consumer raises
    :class:`~shmfuel.exceptions.ShmfuelError` instead of reading the
    parent's ring.
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.util
import os
import signal
import socket
import sys
import threading
import time
import warnings
import weakref
from typing import Any

from shmfuel import _forks
from shmfuel.prefetch import _payload, control, layout, producer, ring

GRACE_S = 1.0

_live_pools: weakref.WeakSet[ProducerPool] = weakref.WeakSet()
_atexit_registered = False


def _at_exit() -> None:
    for pool in list(_live_pools):
        pool.shutdown()


def _register_atexit() -> None:
    global _atexit_registered
    if not _atexit_registered:
        atexit.register(_at_exit)
        _atexit_registered = True


def _cuda_initialized() -> bool:
    torch = sys.modules.get("torch")
    try:
        return bool(torch is not None and torch.cuda.is_initialized())
    except Exception:
        return True


def choose_context(start_method: str | None) -> Any:
    """The multiprocessing context producers start with."""
    methods = multiprocessing.get_all_start_methods()
    if start_method is not None:
        if start_method not in methods:
            raise ValueError(f"start_method must be one of {methods}, got "
                             f"{start_method!r}")
        return multiprocessing.get_context(start_method)
    if (sys.platform.startswith("linux") and threading.active_count() == 1
            and not _cuda_initialized()):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context(
        "forkserver" if "forkserver" in methods else "spawn")


PRODUCER_MODULE = "shmfuel.prefetch.producer"


def preload_producer(context: Any) -> None:
    """Have the forkserver import the producer's code once, before it forks
    anything: each producer then starts with shmfuel imported instead of
    importing it itself (with 8 producers on 2 cores, the first batch came
    about 40% sooner). The caller's own preload list is kept; a forkserver
    already running keeps its list until it is restarted. Done only where
    multiprocessing's list can be read (CPython 3.10-3.13 keep it on the
    module's ForkServer); elsewhere nothing changes."""
    from multiprocessing import forkserver
    modules = getattr(getattr(forkserver, "_forkserver", None),
                      "_preload_modules", None)
    if isinstance(modules, list) and PRODUCER_MODULE not in modules:
        context.set_forkserver_preload([*modules, PRODUCER_MODULE])


def describe_exit(exitcode: int | None) -> str:
    """How a process ended, in words."""
    if exitcode is None:
        return "is still running"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = (" (the OOM killer also sends SIGKILL)"
                if -exitcode == signal.SIGKILL else "")
        return f"was killed by {name}{hint}"
    return f"exited with code {exitcode}"


def join_all(processes: list[Any], seconds: float,
             clock: Any = time.monotonic) -> None:
    """Join ``processes`` within ``seconds`` for all of them together."""
    deadline = clock() + seconds
    for process in processes:
        process.join(max(0.0, deadline - clock()))


class ProducerPool:
    """The producer processes of one Prefetcher and our socket ends."""

    def __init__(self, stream: Any, workers: int, slots: list[int],
                 start_method: str | None, seed: int | None = None,
                 worker_init_fn: Any = None) -> None:
        context = choose_context(start_method)
        self.start_method = context.get_start_method()
        if self.start_method == "forkserver":
            preload_producer(context)
        try:
            payload = _payload.dumps((stream, worker_init_fn),
                                     inherit=self.start_method == "fork")
        except Exception as exc:
            raise TypeError(f"the data stream (or worker_init_fn) cannot be "
                            f"pickled for the producers: {exc}") from exc
        _register_atexit()
        self.processes: list[Any] = []
        self.sockets: list[socket.socket] = []
        self.controls: list[Any] = []  # control pages, or None (sockets)
        self.closed = False
        self.owner = os.getpid()
        self.on_fork: Any = None  # the consumer's, called by inherit()
        _live_pools.add(self)
        _forks.own(self, ProducerPool.inherit)
        try:
            with _payload.inherited(payload.kept):
                self._start(context, payload, workers, slots, seed)
        except BaseException:
            self.shutdown()
            raise

    def _start(self, context: Any, payload: _payload.Payload, workers: int,
               slots: list[int], seed: int | None) -> None:
        # Without a seed, producers still must not share random streams
        # (forked children inherit the parent's): each gets its own base.
        base = seed if seed is not None else int.from_bytes(os.urandom(4), "little")
        shared = control.mode() == "shared"
        forked = self.start_method == "fork"
        # not forked: the stream goes in a segment, not in the arguments,
        # which start() would write down a pipe until the child, busy with
        # its imports, took them all, one producer after another
        stream_fd, size = (None, 0) if forked else _payload.to_segment(payload)
        try:
            for worker in range(workers):
                ours, theirs = socket.socketpair(socket.AF_UNIX,
                                                 socket.SOCK_STREAM)
                self.sockets.append(ours)
                if stream_fd is not None:  # the producer's first message
                    ring.send_segment(ours, layout.encode_message(
                        layout.MSG_STREAM, 0, size), stream_fd)
                if shared:  # then its control page
                    fd, page = control.create(slots[worker])
                    try:
                        ring.send_segment(ours, layout.encode_message(
                            layout.MSG_CONTROL, slots[worker], len(page)), fd)
                    finally:
                        os.close(fd)
                    self.controls.append(page)
                else:
                    self.controls.append(None)
                close_fds = [s.fileno() for s in self.sockets] if forked else []
                process = context.Process(
                    target=producer.main, name=f"shmfuel-producer-{worker}",
                    args=(payload.data if forked else None, theirs, worker, workers,
                          slots[worker], os.getpid(), close_fds, base,
                          seed is not None, shared))
                process.start()
                theirs.close()
                self.processes.append(process)
        finally:
            if stream_fd is not None:
                os.close(stream_fd)

    def inherit(self) -> None:
        """This process is a fork of the pool's owner: the producers are the
        owner's, so nothing here may stop them or read their slots. The
        sockets stay open: a forked producer closes their descriptors by
        number, which must not have been reused by then."""
        self.closed = True
        _live_pools.discard(self)
        if self.on_fork is not None:
            self.on_fork()

    def shutdown(self) -> None:
        """Stop every producer; idempotent. See the module docstring."""
        if self.closed:
            return
        self.closed = True
        _live_pools.discard(self)
        _forks.disown(self)
        stop = layout.encode_message(layout.MSG_STOP)
        for sock in self.sockets:
            try:
                sock.setblocking(False)
                sock.send(stop)
            except OSError:
                pass
            sock.close()
        join_all(self.processes, GRACE_S)
        alive = [p for p in self.processes if p.is_alive()]
        for process in alive:
            process.terminate()
        join_all(alive, GRACE_S)
        for process in alive:
            if process.is_alive():
                warnings.warn(f"producer {process.name} (pid {process.pid}) "
                              "ignored SIGTERM; killing it", ResourceWarning,
                              stacklevel=2)
                process.kill()
                process.join()
        for process in self.processes:
            process.close()
