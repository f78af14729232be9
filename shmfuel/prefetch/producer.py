"""The producer process: run the pipeline, fill slots, publish them.

Data flow of one producer (``worker`` of ``workers``)::

    stream (unpickled copy, its scheme sharded)
      -> next(epoch iterator)                 the user's pipeline runs here
      -> wait for a free slot of our own      (freed by the consumer)
      -> grow the slot if the batch is larger (new segment, MSG_SEGMENT + fd)
      -> write header + sources into it
      -> MSG_READY(slot, size)                in order, on our control page
    end of epoch -> MSG_END(epoch); an exception -> MSG_ERROR(traceback)

Without a control page (``control.mode()`` is ``'socket'``), the messages
go over our socket, READYs in bursts, and freed slots come back there as
MSG_FREE.

It never runs ahead of the consumer by more than its slots, nor by more
than one epoch (it starts epoch ``e + 1`` only once the consumer has
started epoch ``e``). When the consumer starts an epoch while this producer
is still in an older one, the rest of the older one is skipped.

It stops on MSG_STOP, on end-of-file on its socket (the consumer closed it
or died), or when the consumer's process is gone (checked every
``POLL_S`` while waiting). It ignores SIGINT: Ctrl-C goes to the consumer,
which then stops the producers in order (see ``_lifecycle``).
"""

from __future__ import annotations

import collections
import os
import random
import select
import signal
import socket
import time
import traceback
from typing import Any

import numpy

from shmfuel.prefetch import _payload, control, layout, ring
from shmfuel.prefetch.sharding import ShardedScheme, check_per_batch, shard

POLL_S = 0.5
POLL_EVERY = 32  # batches between looks at the consumer's messages
SLOW_NS = 20_000  # a batch slower than this is looked after one by one
_ndarray = numpy.ndarray
_STAMP_INTO, _STAMP_OFFSET = layout.STAMP.pack_into, layout.STAMP_OFFSET
_WAKE = layout.encode_message(layout.MSG_WAKE)
_READY = layout.MSG_READY
_ENTRIES, _ENTRY = control.ENTRIES, control.ENTRY
_PACK_MESSAGE = control.MESSAGE.pack_into
_CONSUMER_ASLEEP = control.CONSUMER_ASLEEP


class _Stop(Exception):
    """The consumer asked us to stop, or is gone."""


def _consumer_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """Whether ``pid``, which exists, has exited (and not been reaped).

    A consumer that could not be asked is taken to be alive: stopping its
    producers for nothing would end its epoch with ProducerDiedError.
    """
    try:
        import psutil
    except ImportError:  # a dependency, but an interpreter may lack it
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                # "pid (name) state ...", where the name may hold ") "
                return stat.read().rsplit(b") ", 1)[1][:1] == b"Z"
        except (OSError, IndexError):
            return False
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


class Producer:
    def __init__(self, sock: socket.socket, worker: int, workers: int,
                 slots: int, consumer_pid: int) -> None:
        self.sock = sock
        self.worker = worker
        self.workers = workers
        self.consumer_pid = consumer_pid
        self.free = collections.deque(range(slots))
        self.maps: list[Any] = [None] * slots
        self.capacity = [0] * slots
        self.consumer_epoch = -1
        self.received = b""
        self.pending: list[bytes] = []
        self.busy_ns = 0
        self.plans: dict[Any, Any] = {}
        # per slot: signature -> (header, layout id, mapping, target views)
        self.views: list[dict[Any, Any]] = [{} for _ in range(slots)]
        self.burst = max(1, min(16, slots // 4))
        self.seed: int | None = None
        # per slot, the layout its header holds now (dtypes, shapes, layout
        # id, mapping, target views, header), None if unplanned: a batch
        # with that very layout (the same dtype objects, the same shapes) is
        # copied in by ``produce`` without hashing anything
        self.last: list[Any] = [None] * slots
        self.ready_messages = [layout.encode_message(layout.MSG_READY, slot)
                               for slot in range(slots)]
        self.layouts = 0  # layout ids handed out
        self.generations = [0] * slots  # segments each slot has had
        self.control: control.ControlPage | None = None
        self.backstop = control.BACKSTOP_S
        self.spin_s, self.spin_yields = control.spin_s(workers)
        self.alive_checked = time.monotonic()

    # -- control channel -------------------------------------------------
    def poll(self, timeout: float) -> None:
        """Handle the consumer's messages, waiting up to ``timeout`` s.

        With a control page, freed slots are taken from it first, and a
        wait is bounded by the backstop (see ``control``).
        """
        page = self.control
        if page is not None:
            frees = page.pop_frees()
            if frees:
                self.free.extend(frees)
                self.backstop = control.BACKSTOP_S
                if timeout > 0:  # the wait is over; the socket can wait
                    return
            elif timeout > 0:
                page.fall_asleep(control.PRODUCER_ASLEEP)
                frees = page.pop_frees()
                if frees:
                    page.wake_up(control.PRODUCER_ASLEEP)
                    self.free.extend(frees)
                    timeout = 0
                else:
                    timeout = min(timeout, self.backstop)
        if timeout > 0:
            readable, _, _ = select.select([self.sock], [], [], timeout)
            if page is not None:
                page.wake_up(control.PRODUCER_ASLEEP)
                frees = page.pop_frees()
                self.free.extend(frees)
                self.backstop = control.next_backstop(
                    self.backstop, bool(frees), bool(readable))
            if not readable:
                now = time.monotonic()
                if now - self.alive_checked >= POLL_S:
                    self.alive_checked = now
                    if not _consumer_alive(self.consumer_pid):
                        raise _Stop
                return
        try:
            data = self.sock.recv(1 << 16, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError as exc:
            raise _Stop from exc
        if not data:
            raise _Stop
        messages, self.received = layout.decode_messages(self.received + data)
        for kind, a, b in messages:
            if kind == layout.MSG_FREE:
                self.free.append(a)
            elif kind == layout.MSG_START:
                self.consumer_epoch = max(self.consumer_epoch, b)
            elif kind == layout.MSG_STOP:
                raise _Stop

    def publish(self, kind: int, a: int = 0, b: int = 0) -> None:
        """Append a ring message for the consumer (page or socket)."""
        page = self.control
        if page is None:
            self.pending.append(layout.encode_message(kind, a, b))
            self.flush()
            return
        message = (kind, a, b, 0, self.busy_ns)
        pushed = page.push_message(*message)
        if pushed != control.PUSHED:
            self._settle(pushed, message)

    def _settle(self, pushed: int, message: tuple[int, ...]) -> None:
        """After a push that found the queue full (retry while handling the
        consumer's messages) or the consumer asleep (wake it)."""
        page: Any = self.control
        while not pushed:  # full: the consumer lags
            self.poll(POLL_S)
            pushed = page.push_message(*message)
        if pushed == control.WAKE:
            self.send(_WAKE)

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise _Stop from exc

    def acquire(self, epoch: int) -> int | None:
        """A free slot, or None if the consumer left this epoch meanwhile."""
        page = self.control
        if page is not None:  # often freed within microseconds
            until = time.perf_counter() + self.spin_s
            yields = self.spin_yields
            while not page.frees_waiting() and time.perf_counter() < until:
                if yields:  # more processes than CPUs
                    os.sched_yield()
        while not self.free:
            self.poll(POLL_S)
            if self.consumer_epoch > epoch:
                return None
        return self.free.popleft()

    # -- slots -------------------------------------------------------------
    def ensure(self, slot: int, size: int) -> Any:
        """The slot's mapping, regrown (a new segment) if under ``size``."""
        if size > self.capacity[slot]:
            self.flush()  # batches already in the old segment go first
            size = ring.grown_size(size, self.capacity[slot])
            fd = ring.create_segment(size)
            try:
                mapping = ring.map_segment(fd, size)
                ring.send_segment(self.sock, layout.encode_message(
                    layout.MSG_SEGMENT, slot, size), fd)
            finally:
                os.close(fd)
            self.views[slot] = {}
            self.last[slot] = None
            self.generations[slot] += 1
            if self.maps[slot] is not None:
                try:
                    self.maps[slot].close()
                except BufferError:  # a view of it is still alive somewhere
                    pass
            self.maps[slot] = mapping
            self.capacity[slot] = size
        return self.maps[slot]

    def write(self, slot: int, batch: Any, seq: int, epoch: int) -> int:
        """Write ``batch`` into ``slot``; its layout id (0: unplanned).

        Batches whose sources are plain arrays of the same dtypes and
        shapes as an earlier one in this slot reuse its plan, header and
        target views: only the stamp and the data are written. (A batch
        with the very layout the slot's header holds does not come here:
        ``produce`` copies it in itself; see ``last``.)
        """
        sig = []  # (dtype, shape) per source, if all are raw arrays
        for value in batch:  # layout.is_raw_array, inlined: the hot path
            if type(value) is not _ndarray:
                break
            dtype = value.dtype
            if dtype.hasobject or dtype.fields is not None or dtype.subdtype:
                break
            sig.append((dtype, value.shape))
        else:
            key = tuple(sig)
            planned = self.views[slot].get(key)
            if planned is None:
                planned = self._plan(slot, key, batch)
            header, layout_id, mapping, targets = planned
            last = self.last[slot]
            if last is not None and last[5] is header:  # only the stamp
                _STAMP_INTO(mapping, _STAMP_OFFSET, seq, epoch, self.busy_ns)
            else:
                layout.stamp(mapping, header, seq, epoch, self.busy_ns)
            self.last[slot] = (tuple([dtype for dtype, _ in key]),
                               tuple([shape for _, shape in key]),
                               layout_id, mapping, targets, header)
            # the signature matched, so dtypes and shapes are equal: a plain
            # copy (item assignment costs a third of numpy.copyto here)
            for target, value in zip(targets, batch):
                target[...] = value
            return layout_id
        # something to pickle: plan this batch afresh
        plan = layout.plan_batch(batch, seq, epoch, self.busy_ns)
        layout.write_batch(self.ensure(slot, plan.size), plan)
        self.last[slot] = None
        return 0

    def _plan(self, slot: int, key: tuple[Any, ...], batch: Any) -> Any:
        """Plan (or recall) a layout and make ``slot``'s views for it."""
        planned = self.plans.get(key)
        if planned is None:
            if len(self.plans) > 64:
                self.plans.clear()
            plan = layout.plan_batch(batch, 0, 0)
            self.layouts += 1  # never reused: ids outlive cleared plans
            planned = self.plans[key] = (plan.header, plan.specs, plan.size,
                                         self.layouts)
        header, specs, size, layout_id = planned
        mapping = self.ensure(slot, size)  # may regrow: clears views[slot]
        if len(self.views[slot]) > 8:  # shapes that keep changing
            self.views[slot].clear()
        owner = numpy.frombuffer(mapping, numpy.uint8)
        targets = [numpy.ndarray(shape, dtype, buffer=owner, offset=offset)
                   for (dtype, shape), (_, _, _, offset, _) in zip(key, specs)]
        token = control.layout_token(layout_id, self.generations[slot], slot)
        result = self.views[slot][key] = (header, token, mapping, targets)
        return result

    def ready(self, slot: int, slow: bool) -> None:
        """Publish a slot over the socket (no control page), in bursts: a
        fast pipeline's READYs a quarter of the ring at a time, one system
        call; a slow pipeline's at once; all pending ones before this
        producer waits for anything. (With a control page, ``produce``
        pushes each MSG_READY onto it at once.)
        """
        self.pending.append(self.ready_messages[slot])
        if slow or len(self.pending) >= self.burst:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.send(b"".join(self.pending))
            self.pending = []

    # -- main loop -----------------------------------------------------------
    def run(self, payload: bytes, buffers: list[memoryview]) -> None:
        try:
            try:
                stream, worker_init_fn = _payload.loads(payload, buffers)
                if worker_init_fn is not None:  # its error is the stream's
                    worker_init_fn(self.worker)
                sharded = (shard(stream, self.worker, self.workers)
                           if self.workers > 1 else None)
                self.produce(stream, sharded)
            except (_Stop, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self.flush()
                self.send(layout.encode_error(exc, traceback.format_exc()))
                if self.control is not None:  # its place among the batches
                    self.publish(layout.MSG_ERROR)
            while True:
                self.poll(POLL_S)
        except _Stop:
            return

    def produce(self, stream: Any, sharded: ShardedScheme | None = None) -> None:
        sources = tuple(stream.sources)
        n_sources = len(sources)
        clock = time.perf_counter_ns
        epoch = 0
        # Batches are counted in windows: the clock is read, the consumer's
        # messages looked at (a new epoch abandons this one) and the busy
        # time added up once per window, which is POLL_EVERY batches while
        # they take under SLOW_NS each (making one and writing it), and a
        # single batch while they take longer.
        # the loop's hot names, looked up once (free is never rebound)
        free, page, seed = self.free, self.control, self.seed
        write, ready, capacity = self.write, self.ready, self.capacity
        lasts = self.last
        single = n_sources == 1
        if page is not None:  # push_message, inlined below
            words, buffer, entries = page.words, page.buffer, page.capacity
        while True:
            self.flush()
            while epoch > self.consumer_epoch + 1:
                self.poll(POLL_S)
            # made even for an epoch the consumer has left: a scheme draws
            # its epoch's order here
            iterator = stream.get_epoch_iterator()
            # this epoch's share of requests, counted (its scheme's iterator
            # is made with the epoch's)
            requests = sharded.requests if sharded is not None else None
            self.poll(0)
            if self.consumer_epoch > epoch:  # left before it began
                self.publish(layout.MSG_END, 0, epoch)
                epoch += 1
                continue
            seq = 0
            if seed is not None:  # the first batch's place in the epoch
                seed_globals(seed, epoch, self.worker)
            slow, every, counted = True, 1, 0  # until the first window
            window = clock()
            waited = 0  # ns spent waiting for a slot in this window
            busy = self.busy_ns  # as of the last window
            for batch in iterator:
                if type(batch) is not tuple or len(batch) != n_sources:
                    _check_batch(batch, sources)
                if requests is not None and requests.taken != seq + 1:
                    check_per_batch(requests, seq + 1)
                if free:
                    slot = free.popleft()
                elif page is not None and page.frees_waiting():
                    free.extend(page.pop_frees())
                    slot = free.popleft()
                else:
                    self.flush()
                    began = clock()
                    acquired = self.acquire(epoch)
                    waited += clock() - began
                    if acquired is None:
                        break
                    slot = acquired
                last = lasts[slot]
                # the layout the slot's header holds (the same dtype
                # objects, the same shapes)? Then only the data is copied
                # in, and the stamp if no control page's MSG_READY carries
                # it; else write() plans it.
                if last is not None:
                    if single:
                        value = batch[0]
                        if (type(value) is _ndarray
                                and value.dtype is last[0][0]
                                and value.shape == last[1][0]):
                            last[4][0][...] = value
                        else:
                            last = None
                    else:
                        for value, dtype, shape in zip(batch, last[0], last[1]):
                            if (type(value) is not _ndarray
                                    or value.dtype is not dtype
                                    or value.shape != shape):
                                last = None
                                break
                        else:
                            for target, value in zip(last[4], batch):
                                target[...] = value
                if last is not None:
                    layout_id = last[2]
                    if page is None:
                        _STAMP_INTO(last[3], _STAMP_OFFSET, seq, epoch, busy)
                else:
                    layout_id = write(slot, batch, seq, epoch)
                if page is None:
                    ready(slot, slow)
                else:  # page.push_message(_READY, ...), inlined
                    written = page.messages_written
                    if written - page.seen_messages_read < entries:
                        at = _ENTRIES + written % entries * _ENTRY
                        _PACK_MESSAGE(buffer, at + 8, _READY, slot,
                                      capacity[slot], layout_id, busy)
                        page.messages_written = words[at >> 3] = written + 1
                        if words[_CONSUMER_ASLEEP]:
                            self._settle(page.wake_consumer(), ())
                    else:  # the queue looks full: look again, or wait
                        message = (_READY, slot, capacity[slot], layout_id,
                                   busy)
                        self._settle(page.push_message(*message), message)
                seq += 1
                counted += 1
                if counted >= every:  # the window is over
                    now = clock()
                    spent = now - window - waited
                    self.busy_ns = busy = busy + spent
                    slow = spent >= SLOW_NS * counted
                    every = 1 if slow else POLL_EVERY
                    window, waited, counted = now, 0, 0
                    self.poll(0)
                    if self.consumer_epoch > epoch:
                        break
                    if slow:
                        self.flush()
                if seed is not None:
                    # the next batch's place in the epoch, whatever the
                    # workers
                    seed_globals(seed, epoch,
                                 seq * self.workers + self.worker)
            else:  # the epoch ran out
                if requests is not None:
                    check_per_batch(requests, seq)
            self.busy_ns += clock() - window - waited
            self.flush()
            self.publish(layout.MSG_END, 0, epoch)
            epoch += 1


def _check_batch(batch: Any, sources: tuple[str, ...]) -> None:
    if not isinstance(batch, (tuple, list)):
        raise TypeError(f"the stream yielded a {type(batch).__name__}; a "
                        "stream must yield a tuple with one item per source "
                        f"{sources}")
    if len(batch) != len(sources):
        raise ValueError(f"the stream yielded {len(batch)} items but has "
                         f"{len(sources)} sources {sources}")


def _receive_fd(sock: socket.socket, expected: int) -> tuple[int, int]:
    """A message with a file descriptor that the consumer sent before
    starting us: the descriptor and the size the message gives."""
    data, fds, _, _ = socket.recv_fds(sock, layout.MESSAGE.size, 1)
    if len(data) != layout.MESSAGE.size or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise RuntimeError("the consumer's first messages did not arrive "
                           "whole; it may have exited while we started")
    kind, _, size = layout.MESSAGE.unpack(data)
    if kind != expected:
        os.close(fds[0])
        raise RuntimeError(f"the consumer's first messages were not as "
                           f"expected (got kind {kind}, wanted {expected})")
    return fds[0], size


def _receive_stream(sock: socket.socket) -> tuple[bytes, list[memoryview]]:
    """The pickled stream and its arrays, from the segment the consumer
    sent first."""
    fd, size = _receive_fd(sock, layout.MSG_STREAM)
    try:
        return _payload.from_segment(fd, size)
    finally:
        os.close(fd)


def _receive_control(sock: socket.socket, slots: int) -> Any:
    """The control page the consumer sent before starting us."""
    fd, size = _receive_fd(sock, layout.MSG_CONTROL)
    try:
        mapping = ring.map_segment(fd, size)
    finally:
        os.close(fd)
    return control.ControlPage(mapping, slots)


def seed_globals(*key: int) -> None:
    """Seed ``random`` and numpy's global generator from ``key``."""
    seeds = numpy.random.SeedSequence(list(key)).generate_state(2)
    random.seed(int(seeds[0]))
    numpy.random.seed(int(seeds[1]))


def main(payload: bytes | None, sock: socket.socket, worker: int, workers: int,
         slots: int, consumer_pid: int, close_fds: list[int], seed: int,
         per_batch: bool, shared: bool = False) -> None:
    """Entry point of a producer process. Without ``payload`` (not forked),
    the stream comes first on ``sock``, in a shared segment."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for fd in close_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    seed_globals(seed, worker)
    producer = Producer(sock, worker, workers, slots, consumer_pid)
    producer.seed = seed if per_batch else None
    buffers: list[memoryview] = []
    if payload is None:
        payload, buffers = _receive_stream(sock)
    if shared:
        producer.control = _receive_control(sock, slots)
    producer.run(payload, buffers)
