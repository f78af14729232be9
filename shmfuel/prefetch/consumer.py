"""The consumer side: wait for slots in order, hand out views, recycle.

Data flow, in the training process::

    control page of w    -> MSG_READY / MSG_END / MSG_ERROR, in order:
                            a READY whose layout id (a token of layout,
                            slot and segment) is known is taken straight
                            off the page by ``batches``; anything else
                            by ``next_batch``, as it is (kind, a, b,
                            layout id, busy ns), through inbox[w] once a
                            wait or ``stats()`` has moved it there
    socket of producer w -> MSG_SEGMENT: map the new segment of a slot
                            (before the MSG_READY naming its size), an
                            error's payload, MSG_WAKE; with no control
                            page (see ``control.mode``), the messages too
    next batch g of the epoch: producer g % workers, in turn
      MSG_READY(slot) -> numpy views of the slot (every view's ``base`` is
                         the slot's ``owner``, a uint8 array over it)
      MSG_END         -> the epoch is over: every other producer's next
                         message must be its MSG_END too
      MSG_ERROR       -> re-raise the pipeline's exception, for good
    owner referenced by us alone again (its reference count, checked every
    quarter ring of batches and before waiting; by ``batches`` with one
    producer, only while under half a ring of batches is ready) -> slot to
    producer w's free queue, with how far its messages were read

Views stay valid as long as any of them is referenced: a slot is written
again only after the consumer freed it, and that happens only
once nothing but the consumer references the slot's owner array, that is,
once every view of it (and every view of those) is gone.

If a delivery would leave producer ``w`` with every slot held by views the
caller keeps, it is copied instead and its slot freed at once: hoarding
batches costs memory, never a deadlock.
"""

from __future__ import annotations

import array
import collections
import functools
import itertools
import mmap
import os
import pickle
import select
import socket
import time
from collections.abc import Iterator
from sys import getrefcount
from time import perf_counter
from typing import Any

import numpy

from shmfuel.exceptions import (
    ClosedError,
    PrefetchTimeoutError,
    ProducerDiedError,
    RemoteTraceback,
    ShmfuelError,
)
from shmfuel.prefetch import control, layout, ring
from shmfuel.prefetch._lifecycle import ProducerPool, describe_exit

_EMPTY = b""
_FIXED, _MAGIC, _META = layout.FIXED, layout.MAGIC, layout.FIXED.size
_READY, _ARRAY = layout.MSG_READY, layout.ARRAY
_ndarray = numpy.ndarray
_loads = pickle.loads
_WAKE = layout.encode_message(layout.MSG_WAKE)
_ENTRIES, _ENTRY = control.ENTRIES, control.ENTRY
_NO_BATCH = object()


class Channel:
    """What the consumer knows of one producer."""

    def __init__(self, worker: int, sock: socket.socket, process: Any,
                 slots: int, page: Any = None) -> None:
        self.worker = worker
        self.control = (None if page is None
                        else control.ControlPage(page, slots))
        self.sizes = [0] * slots  # of each slot's segment
        self.errors: collections.deque[bytes] = collections.deque()
        self.sock = sock
        self.process = process
        self.slots = slots
        self.maps: list[mmap.mmap | None] = [None] * slots
        self.owners: list[Any] = [None] * slots
        # per slot: (specs, template arrays or None per source, all arrays,
        #            layout id they were announced with, 0 if none)
        self.templates: list[Any] = [None] * slots
        # MSG_READYs that need nothing but a view, by their layout id (see
        # control.layout_token: it names the slot and its segment too):
        # slot and template arrays (see Consumer.batches); one per slot
        self.known: dict[int, tuple[int, Any]] = {}
        self.viewed: list[int] = []  # slots whose views may be out
        self.base_refs = 0  # refcount of a fresh owner
        self.free_refs = [0] * slots  # refcount of an owner nobody else holds
        self.free_messages = [layout.encode_message(layout.MSG_FREE, slot)
                              for slot in range(slots)]
        # messages in order: (kind, a, b, layout id, busy ns), as a control
        # page gives them (see ``control``); a MSG_READY's a is its slot and
        # b the size of the slot's segment
        self.inbox: collections.deque[tuple[int, int, Any, int, int]] = (
            collections.deque())
        self.pending = _EMPTY
        self.fds: collections.deque[int] = collections.deque()
        self.pinned = 0  # released slots whose device copies may still run
        self.max_held = slots - 1
        self.to_free: list[int] = []
        self.busy_ns = 0

    def take_released(self) -> list[int]:
        """The slots in ``viewed`` whose owner only the consumer references
        again (see ``Consumer._collect``), taken out of it."""
        viewed, owners, free_refs = self.viewed, self.owners, self.free_refs
        out, released = [], []
        for slot in viewed:
            if getrefcount(owners[slot]) > free_refs[slot]:
                out.append(slot)
            else:
                released.append(slot)
        if released:
            viewed[:] = out  # in place: batches() holds the list
        return released

    def wake(self) -> None:
        """Wake the producer, found asleep by a flush."""
        try:
            self.sock.send(_WAKE)
        except OSError:
            pass

    @property
    def held(self) -> int:
        """Slots taken and not yet free again: views may be out, or device
        copies from them still run."""
        return len(self.viewed) + self.pinned

    def cache(self, slot: int, cached: Any) -> Any:
        """Keep ``cached`` (see ``templates``; None: forget) for ``slot``,
        and the MSG_READY it answers without a look at the header."""
        old = self.templates[slot]
        if old is not None:
            self.known.pop(old[3], None)
        self.templates[slot] = cached
        if cached is not None and cached[2] and cached[3]:  # arrays, an id
            self.known[cached[3]] = (slot, cached[1])
        return cached


class Consumer:
    """Ordered delivery from a :class:`ProducerPool`; see the module doc."""

    def __init__(self, pool: ProducerPool, slots: list[int], copy: bool,
                 timeout: float | None, pinning: Any = None) -> None:
        self.pool = pool
        self.channels = [Channel(w, s, p, n, c) for w, (s, p, n, c) in
                         enumerate(zip(pool.sockets, pool.processes, slots,
                                       pool.controls))]
        self.n_channels = len(self.channels)
        self.backstop = control.BACKSTOP_S
        self.spin_s, self.spin_yields = control.spin_s(len(self.channels))
        for channel in self.channels:  # deliver a copy when held reaches it
            channel.max_held = -1 if copy else channel.slots - 1
        self.copy = copy
        self.timeout = timeout
        self.pinning = pinning
        self.in_flight: list[tuple[Any, int, int]] = []
        self.epoch = -1
        self.position = 0
        self.epoch_done = True
        self.broken: BaseException | None = None
        # the epoch whose batches next_batch hands out without looking
        # further: -1 once it is done or the consumer is broken
        self.live = -1
        pool.on_fork = self._forked
        # stats
        self.started = time.perf_counter()
        self.first_batch_s: float | None = None
        self.earlier = 0  # batches delivered in the epochs before
        self.copied = 0
        self.waits = array.array("d")
        self.specs: dict[bytes, Any] = {}
        self.poller: Any = None
        # Released views are looked for every quarter ring of batches, and
        # what is found goes back to the producers at once, in one burst
        # (one system call without control pages); slots freed by copies
        # go back a quarter ring at a time too. Both happen before any
        # wait. (Looking less often costs the consumer less per batch but
        # holds more slots back, and leaves a fast producer longer without
        # one: past its spin, it sleeps.)
        self.to_free = 0
        self.flush_at = max(1, min(slots) // 4)

    # -- receiving -----------------------------------------------------------
    def _receive(self, channel: Channel) -> None:
        """Move what ``channel``'s producer sent into its inbox.

        Messages from the control page go in as they are: what they need
        from the socket (a new segment, an error's payload) is received
        when they are taken (see ``_segment`` and ``_error_payload``).
        """
        page = channel.control
        if page is None:
            self._receive_socket(channel)
            return
        messages = page.pop_messages()
        if messages:
            channel.inbox.extend(messages)

    def _segment(self, channel: Channel, slot: int, size: int) -> None:
        """Receive the segment of ``size`` bytes that a MSG_SEGMENT sent on
        the socket before the control page's MSG_READY for ``slot``."""
        self._sync(channel, lambda: channel.sizes[slot] == size)

    def _error_payload(self, channel: Channel, value: Any) -> bytes:
        """The payload of a MSG_ERROR: in the message (socket), or sent on
        the socket before the control page's MSG_ERROR."""
        if channel.control is None:
            return value
        self._sync(channel, lambda: bool(channel.errors))
        return channel.errors.popleft()

    def _sync(self, channel: Channel, done: Any) -> None:
        """Receive from ``channel``'s socket until ``done()``."""
        while True:
            self._receive_socket(channel)
            if done():
                return
            ready = select.select([channel.sock, channel.process.sentinel],
                                  [], [], 1.0)[0]
            if channel.sock not in ready and ready:
                self._died(channel)

    def _receive_socket(self, channel: Channel) -> None:
        try:
            received = ring.receive_nowait(channel.sock, 1 << 16, 64)
        except OSError:
            received = (_EMPTY, [])
        if received is None:
            return
        data, fds = received
        channel.fds.extend(fds)
        if not data:
            self._died(channel)
        messages, channel.pending = layout.decode_messages(
            channel.pending + data)
        for kind, slot, value in messages:
            if kind == layout.MSG_SEGMENT:
                fd = channel.fds.popleft()
                try:
                    mapping = ring.map_segment(fd, value)
                finally:
                    os.close(fd)
                if self.pinning is not None:
                    if channel.maps[slot] is not None:
                        self.pinning.unregister(channel.maps[slot])
                    self.pinning.register(mapping)
                channel.maps[slot] = mapping
                channel.sizes[slot] = value
                channel.owners[slot] = numpy.frombuffer(mapping, numpy.uint8)
                channel.cache(slot, None)
                channel.base_refs = getrefcount(channel.owners[slot])
                channel.free_refs[slot] = channel.base_refs
            elif kind == layout.MSG_READY:
                channel.inbox.append((kind, slot, channel.sizes[slot], 0, 0))
            elif kind == layout.MSG_WAKE:
                pass
            elif kind == layout.MSG_ERROR and channel.control is not None:
                channel.errors.append(value)
            else:
                channel.inbox.append((kind, slot, value, 0, 0))

    def _check_pool(self) -> None:
        """Raise ClosedError if the producers were stopped under a live
        iterator (by the exit hook: the interpreter is exiting)."""
        if self.pool.closed:
            closed = ClosedError("the producers of this Prefetcher were stopped "
                                 "(the interpreter is exiting, or it was "
                                 "closed); make a new one")
            self.fail(closed)
            raise closed

    def _died(self, channel: Channel) -> None:
        self._check_pool()  # not dead: stopped
        process = channel.process
        process.join(1.0)
        method = self.pool.start_method
        if process.exitcode == 1 and method != "fork" and not any(channel.sizes):
            # before its first batch: most often the main module, imported
            # again by the new interpreter, failed (its error is on stderr)
            hint = (f"It exited before its first batch: with start_method="
                    f"{method!r} each producer imports the main module again, "
                    "so the code that makes a Prefetcher must be under "
                    "'if __name__ == \"__main__\":' (the producer's own "
                    "error is printed above)")
        else:
            hint = ("Look for what killed it (memory, a crash in a C "
                    "extension, os._exit in the pipeline)")
        exc = ProducerDiedError(
            f"producer {channel.worker} (pid {process.pid}) "
            f"{describe_exit(process.exitcode)}; the batches it had not "
            f"delivered are lost. {hint}",
            worker=channel.worker, pid=process.pid,
            exitcode=process.exitcode)
        self._break(exc)
        raise exc

    def _wait(self, channel: Channel, deadline: float | None) -> None:
        """Block until ``channel`` has data, a producer dies, or time is up.

        Whatever other producers sent meanwhile is received too. While CUDA
        copies are in flight it wakes every millisecond, so that
        ``_collect`` can retire them (see ``_pinning``).
        """
        self._check_pool()
        self._flush()
        timeout = None if deadline is None else deadline - time.monotonic()
        if timeout is not None and timeout <= 0:
            exc = PrefetchTimeoutError(
                f"no batch from producer {channel.worker} (pid "
                f"{channel.process.pid}) within timeout={self.timeout} s; it "
                "is alive, so the pipeline is slower than that: raise timeout")
            self._break(exc)
            raise exc
        if self.in_flight:
            timeout = 0.001 if timeout is None else min(timeout, 0.001)
        page = channel.control
        if page is not None:
            # the batch is often microseconds away: look again for a while
            until = perf_counter() + self.spin_s
            yields = self.spin_yields
            while perf_counter() < until:
                if page.messages_waiting():
                    return
                if yields:  # more processes than CPUs
                    os.sched_yield()
            page.fall_asleep(control.CONSUMER_ASLEEP)
            if page.messages_waiting():
                page.wake_up(control.CONSUMER_ASLEEP)
                return
            timeout = (self.backstop if timeout is None
                       else min(timeout, self.backstop))
        if self.poller is None:
            self.poller = select.poll()
            for c in self.channels:
                self.poller.register(c.sock.fileno(), select.POLLIN)
                self.poller.register(c.process.sentinel, select.POLLIN)
            self.by_fd = {c.sock.fileno(): c for c in self.channels}
            self.by_sentinel = {c.process.sentinel: c for c in self.channels}
        ready = self.poller.poll(None if timeout is None
                                 else max(0, int(timeout * 1000) + 1))
        if page is not None:
            page.wake_up(control.CONSUMER_ASLEEP)
            self.backstop = control.next_backstop(
                self.backstop, page.messages_waiting(), bool(ready))
        dead = []
        for fd, _ in ready:
            if fd in self.by_fd:
                self._receive_socket(self.by_fd[fd])
            else:
                dead.append(self.by_sentinel[fd])
        for other in dead:
            if other is not channel or not channel.inbox:
                self._died(other)

    def _take(self, channel: Channel) -> tuple[int, int, Any, int, int]:
        deadline = (None if self.timeout is None
                    else time.monotonic() + self.timeout)
        while not channel.inbox:
            self._receive(channel)
            if channel.inbox:
                break
            self._collect()
            self._wait(channel, deadline)
        return channel.inbox.popleft()

    # -- releasing -----------------------------------------------------------
    def _collect(self) -> None:
        """Turn released views and finished copies into slots to free.

        A slot is released when its owner's reference count is back to what
        the consumer alone holds: every view of it, and every view of those
        (numpy keeps the owner as their ``base``), is gone. This costs a
        few nanoseconds per slot out, where a weakref callback per delivery
        cost a microsecond. (It relies on exact reference counts, as in the
        CPython builds with a GIL that shmfuel supports.)
        """
        for channel in self.channels:
            if not channel.viewed:
                continue
            released = channel.take_released()
            if not released:
                continue
            if self.pinning is not None:
                event = self.pinning.record()  # one event serves them all
                self.in_flight.extend([(event, channel.worker, slot)
                                       for slot in released])
                channel.pinned += len(released)
            else:
                channel.to_free.extend(released)
                self.to_free += len(released)
        if self.in_flight:
            still = []
            for event, worker, slot in self.in_flight:
                if self.pinning.done(event):
                    channel = self.channels[worker]
                    channel.pinned -= 1
                    channel.to_free.append(slot)
                    self.to_free += 1
                else:
                    still.append((event, worker, slot))
            self.in_flight = still

    def _await_copies(self, channel: Channel) -> None:
        """Wait for the device to finish with this producer's released slots
        until one is free, instead of copying the batch out: a training loop
        that queued copies far ahead of the GPU is held back, as a full
        CUDA queue would hold it, and every batch stays page-locked."""
        while channel.held + 1 >= channel.slots:
            for event, worker, _ in self.in_flight:
                if worker == channel.worker:
                    self.pinning.wait(event)
                    break
            else:
                return  # the caller holds the views: copy
            self._collect()

    def _flush(self) -> None:
        """Free the slots collected, and tell each producer how far its
        messages were read (``batches`` does not, batch by batch: until
        its slots come back, a producer cannot fill its queue). Before
        every wait too."""
        self.to_free = 0
        for channel in self.channels:
            page = channel.control
            if page is not None:
                if page.give_back(channel.to_free):
                    channel.wake()
                if channel.to_free:
                    channel.to_free = []
            elif channel.to_free:
                messages = channel.free_messages
                message = b"".join([messages[s] for s in channel.to_free])
                channel.to_free = []
                try:
                    channel.sock.sendall(message)
                except OSError:
                    pass

    # -- epochs --------------------------------------------------------------
    def _break(self, exc: BaseException) -> None:
        if self.broken is None:
            self.fail(exc)
            self.pool.shutdown()

    def fail(self, exc: BaseException) -> None:
        """Raise ``exc`` from every later call."""
        self.broken = exc
        self.live = -1

    def _forked(self) -> None:
        """In a forked child (see ``ProducerPool.inherit``)."""
        self.pinning = None  # a forked child cannot use CUDA
        self.in_flight = []
        self.fail(ShmfuelError(
            f"this Prefetcher belongs to process {self.pool.owner}; process "
            f"{os.getpid()} is a fork of it and cannot read its batches (its "
            "ring and producers serve the parent). Make a Prefetcher in this "
            "process instead"))

    @property
    def delivered(self) -> int:
        return self.earlier + self.position

    def release(self) -> None:
        """Stop the producers and un-pin the slots. Idempotent."""
        self.pool.shutdown()
        if self.pinning is not None:
            self.pinning.synchronize()  # no copy may still read a slot
            for channel in self.channels:
                for mapping in channel.maps:
                    if mapping is not None:
                        self.pinning.unregister(mapping)
            self.pinning = None

    def check(self) -> None:
        if self.broken is not None:
            raise self.broken

    def start_epoch(self) -> int:
        """Begin the next epoch, skipping what is left of the current one."""
        self.check()
        abandoned = None if self.epoch_done else self.epoch
        self.epoch += 1
        self.earlier += self.position
        self.position = 0
        self.epoch_done = False
        start = layout.encode_message(layout.MSG_START, 0, self.epoch)
        for channel in self.channels:
            try:
                channel.sock.sendall(start)
            except OSError:
                self._died(channel)
        if abandoned is not None:
            for channel in self.channels:
                self._skip_to_end(channel, abandoned)
        self.live = self.epoch
        return self.epoch

    def _skip_to_end(self, channel: Channel, epoch: int,
                     strict: bool = False) -> None:
        while True:
            kind, slot, value, _, _ = self._take(channel)
            if kind == layout.MSG_END:
                return
            if kind == layout.MSG_ERROR:
                self._raise_remote(self._error_payload(channel, value))
            if strict:
                exc = ShmfuelError(
                    f"producer {channel.worker} still had batches when epoch "
                    f"{epoch} ended: the pipeline is not per-batch (each "
                    "item must come from one request); use workers=1")
                self._break(exc)
                raise exc
            channel.to_free.append(slot)
            self.to_free += 1

    def _raise_remote(self, payload: bytes) -> None:
        exc, name, message, tb = layout.decode_error(payload)
        if exc is None:
            exc = ShmfuelError(f"the pipeline raised {name}: {message} (the "
                               "exception could not be unpickled here)")
        elif not isinstance(exc, Exception):
            # SystemExit from a sys.exit() in the pipeline: raised as it is,
            # it would end the training process without a word
            exc = ShmfuelError(
                f"the pipeline raised {name}: {message} in a producer; it "
                "is reported here instead of ending the training loop (raise "
                "an Exception to report an error from the pipeline)")
        exc.__cause__ = RemoteTraceback(tb)
        self._break(exc)
        raise exc

    def next_batch(self, epoch: int, prefetcher: Any = None) -> tuple[Any, ...]:
        """The next batch of ``epoch``; ``StopIteration`` at its end.
        (``prefetcher``, unused, is kept alive by the epoch iterator.)

        Every batch goes through here without control pages or with
        pinning, and with them every batch that ``batches`` leaves: the
        common case (a batch is ready, its layout known, views allowed) is
        still written out in one function.
        """
        if epoch != self.live:  # broken, done, or an older epoch's iterator
            self.check()
            if epoch != self.epoch:
                raise ShmfuelError(
                    f"this epoch iterator (epoch {epoch}) was superseded by "
                    f"epoch {self.epoch}: only the newest epoch iterator of "
                    "a Prefetcher can be used")
            raise StopIteration
        position = self.position
        if not position % self.flush_at:
            self._collect()
            if self.to_free:
                self._flush()
        elif self.in_flight:
            self._collect()
        channel = self.channels[position % self.n_channels]
        if channel.inbox:
            kind, slot, size, layout_id, _ = channel.inbox.popleft()
        else:  # the next message, if it is there, else wait for it
            message = (None if channel.control is None
                       else channel.control.pop_message())
            if message is None:
                started = perf_counter()
                message = self._take(channel)
                self.waits.append(perf_counter() - started)
            kind, slot, size, layout_id, _ = message
        if kind != _READY:
            self._end_of_epoch(channel, kind, size, epoch)
        if channel.sizes[slot] != size:  # its MSG_SEGMENT is still on the way
            self._segment(channel, slot, size)
        self.position = position + 1
        cached = channel.templates[slot]
        if cached is None or not layout_id or cached[3] != layout_id:
            # read the slot's header
            cached = self._layout(channel, slot, layout_id)
        specs = cached[0]
        if channel.held >= channel.max_held:  # copy=True, or hoarding
            return self._finish(self._copy_out(channel, slot,
                                               channel.owners[slot], specs))
        templates = cached[1]
        if cached[2]:  # arrays only: the common case
            if len(templates) == 1:
                batch: tuple[Any, ...] = (templates[0].view(),)
            else:
                batch = tuple([template.view() for template in templates])
            channel.viewed.append(slot)
            if self.to_free >= self.flush_at or self.first_batch_s is None:
                return self._finish(batch)
            return batch
        values: list[Any] = []
        owner = channel.owners[slot]
        for template, (_, _, _, offset, nbytes) in zip(templates, specs):
            if template is not None:
                values.append(template.view())
            else:
                values.append(_loads(owner[offset:offset + nbytes].data))
        if any(template is not None for template in templates):
            channel.viewed.append(slot)
        else:
            channel.to_free.append(slot)
            self.to_free += 1
        return self._finish(tuple(values))

    def epoch_iterator(self, epoch: int, prefetcher: Any = None
                       ) -> Iterator[tuple[Any, ...]]:
        """The batches of ``epoch``, started by ``start_epoch``.

        ``next_batch(epoch)`` called until it raises StopIteration (it never
        returns the sentinel), with no Python frame between the loop and
        the consumer. With control pages and no pinning, ``batches``
        delivers most batches first; once it ends (the epoch's end, or an
        exception it raised), chain goes on with ``next_batch``, which says
        the same again. The iterator holds ``prefetcher``, so that ``for
        batch in Prefetcher(stream).get_epoch_iterator()`` does not stop the
        producers by dropping the Prefetcher.
        """
        general = iter(functools.partial(self.next_batch, epoch, prefetcher),
                       _NO_BATCH)
        if self.pinning is not None or self.channels[0].control is None:
            return general
        return itertools.chain(self.batches(epoch, prefetcher), general)

    def batches(self, epoch: int, prefetcher: Any = None) -> Iterator[tuple[Any, ...]]:
        """The batches of ``epoch`` (with control pages and no pinning); it
        returns at the end of the epoch.

        The loop's names stay bound from one batch to the next, which makes
        this the cheapest way to deliver the common batch: the epoch live,
        its MSG_READY on the page, its slot's layout known, every source an
        array, and the batch not one that would leave its producer without
        a slot. Every other batch, and every wait, goes to ``next_batch``.
        An exception ends this generator; the epoch iterator then goes on
        with ``next_batch``, which raises it again (see
        ``Prefetcher.get_epoch_iterator``).
        """
        n_channels, flush_at = self.n_channels, self.flush_at
        next_batch, collect, flush = self.next_batch, self._collect, self._flush
        hot = []
        for channel in self.channels:
            page: Any = channel.control  # every channel has one here
            # the word of each message entry that holds its number
            numbers = [(_ENTRIES + n * _ENTRY) >> 3
                       for n in range(page.capacity)]
            hot.append((page, page.words, page.capacity, numbers,
                        channel.inbox, channel.known, channel.viewed,
                        channel.max_held))
        (page, words, capacity, numbers, inbox, known, viewed,
         max_held) = hot[0]
        solo = self.channels[0] if n_channels == 1 else None
        half_ring = 2 * flush_at
        while True:
            position = self.position
            if n_channels > 1:
                (page, words, capacity, numbers, inbox, known, viewed,
                 max_held) = hot[position % n_channels]
            if not position % flush_at:  # as next_batch does
                if solo is None or self.to_free:
                    collect()
                    if self.to_free:
                        flush()
                else:
                    # One producer, no copies' slots to free: _collect and
                    # _flush in place (they were a quarter of this loop's
                    # cost), and only while fewer than half a ring of
                    # batches is ready; with more, the producer does not
                    # wait for these slots yet.
                    last = page.messages_read + half_ring - 1
                    # not page.messages_waiting(half_ring), inlined
                    if (words[numbers[last % capacity]] != last + 1
                            and page.give_back(solo.take_released())):
                        solo.wake()
            read = page.messages_read
            number = numbers[read % capacity]
            if (words[number] == read + 1 and epoch == self.live
                    and not inbox and len(viewed) < max_held):
                ready = known.get(words[number + 3])  # its layout id
                if ready is not None:
                    # taken; the page hears of it at the next flush
                    page.messages_read = read + 1
                    self.position = position + 1
                    slot, arrays = ready
                    viewed.append(slot)
                    if len(arrays) == 1:
                        yield (arrays[0].view(),)
                    else:
                        yield tuple([array.view() for array in arrays])
                    continue
            try:  # anything else: the general path (it takes the message)
                yield next_batch(epoch)
            except StopIteration:
                return

    def _layout(self, channel: Channel, slot: int, layout_id: int) -> Any:
        """Read the slot's header; update its templates if its layout
        changed, and remember ``layout_id`` (0: none) as theirs."""
        cached = channel.templates[slot]
        specs = self._read_header(channel, slot)
        if cached is None or cached[0] is not specs:
            cached = self._templates(channel, slot, channel.owners[slot], specs)
        return channel.cache(slot, cached[:3] + (layout_id,))

    def _read_header(self, channel: Channel, slot: int) -> Any:
        """The source specs in the header of ``slot`` (and its busy ns)."""
        mapping: Any = channel.maps[slot]
        fixed = _FIXED.unpack_from(mapping)
        if fixed[0] != _MAGIC:
            raise ShmfuelError(f"slot {slot} of producer {channel.worker} "
                               "holds no batch")
        if channel.control is None:
            channel.busy_ns = fixed[6]
        meta = mapping[_META:_META + fixed[3]]
        specs = self.specs.get(meta)
        if specs is None:
            specs = self._decode(meta)
        return specs

    @staticmethod
    def _templates(channel: Channel, slot: int, owner: numpy.ndarray,
                   specs: Any) -> Any:
        """Arrays over the slot for its current layout, kept by the consumer.

        Each delivery hands out ``template.view()`` (a tenth of the cost of
        a new ``ndarray`` over the buffer); every view's ``base`` is still
        ``owner``. The templates' own references to ``owner`` are part of
        the count at which the slot is free again.
        """
        templates = tuple(
            _ndarray(shape, dtype, buffer=owner, offset=offset)
            if kind == _ARRAY else None
            for kind, dtype, shape, offset, _ in specs)
        arrays = sum(template is not None for template in templates)
        cached = channel.cache(slot, (specs, templates,
                                      arrays == len(templates), 0))
        channel.free_refs[slot] = channel.base_refs + arrays
        return cached

    def _finish(self, batch: tuple[Any, ...]) -> tuple[Any, ...]:
        if self.to_free >= self.flush_at:
            self._flush()
        if self.first_batch_s is None:
            self.first_batch_s = perf_counter() - self.started
        return batch

    def _end_of_epoch(self, channel: Channel, kind: int, value: Any,
                      epoch: int) -> None:
        """Raise what a non-batch message means: the error, or the end."""
        if kind == layout.MSG_ERROR:
            self._raise_remote(self._error_payload(channel, value))
        self.epoch_done = True
        self.live = -1
        for other in self.channels:
            if other is not channel:
                self._skip_to_end(other, epoch, strict=True)
        self._flush()
        raise StopIteration

    def _decode(self, meta: bytes) -> Any:
        if len(self.specs) > 256:
            self.specs.clear()
        specs = self.specs[meta] = layout.decode_meta(meta)
        return specs

    def _copy_out(self, channel: Channel, slot: int, owner: numpy.ndarray,
                  specs: Any) -> tuple[Any, ...]:
        """The slow path: release what can be released first; if the producer
        would still be left without a slot (or ``copy=True``), hand out
        owned arrays and free the slot at once, else views as usual."""
        if channel.held + 1 >= channel.slots:
            self._collect()
            if self.pinning is not None:
                self._await_copies(channel)
        if not self.copy and channel.held + 1 < channel.slots:
            values, has_view = layout.read_batch(owner, specs)
            if has_view:
                channel.viewed.append(slot)
                return values
        else:
            values, _ = layout.read_batch(owner, specs, copy=True)
            if any(spec.kind == layout.ARRAY for spec in specs):
                self.copied += 1
        channel.to_free.append(slot)
        self.to_free += 1
        return values
