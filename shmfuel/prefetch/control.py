"""A producer's control page: its ring's notifications in shared memory.

Batches are announced without system calls: the producer appends ring
messages (MSG_READY, MSG_END, MSG_ERROR) to a queue in a shared page and
the consumer appends the slots it frees to another. Each queue has one
writer and one reader, and each side only ever advances its own counter,
so no locks are needed. Counters, flags and message numbers are native
8-byte words, each read and written with one aligned access (through a
``memoryview`` cast: ``struct.pack_into`` zeroes its target before it
writes the bytes, so a reader could see a counter fall to 0)::

    offset   0  (unused)
    offset  64  messages read     (u64, consumer; it may lag behind the
                                   messages taken until the consumer frees
                                   slots or waits: only the queue's
                                   fullness depends on it, and a producer
                                   cannot fill it before its slots return)
    offset 128  frees written     (u64, consumer)
    offset 192  frees read        (u64, producer)
    offset 256  consumer asleep   (u64: set by the consumer, cleared by
                                   the producer when it wakes it)
    offset 320  producer asleep   (u64: the same, the other way)
    offset 384  messages          ``capacity`` x 64 bytes: the message's
                                   number + 1 (u64, written last), then
                                   ``<IIQQQ``: kind, a, b as in
                                   ``layout.MESSAGE``, for MSG_READY the
                                   batch's layout id (else 0), and the
                                   producer's busy ns
    then        frees             ``slots`` x u32 (a slot is freed at most
                                   once per MSG_READY, so they always fit)

A MSG_READY's layout id names the batch's header (its sources' dtypes,
shapes and offsets) in that slot's current segment (see ``layout_token``),
0 when the header must be read: a consumer that already knows it does not
read the slot's header at all, so the header's cache line stays with the
producer, and it looks the batch up by that one word. For the same
reason each message has a cache line of its own and carries its number:
the consumer looks at the next message's number, not at a counter that
would be one more line to move between the cores.

What cannot live in the page still goes over the producer's socket, in
order with the page: a new slot segment (MSG_SEGMENT with its file
descriptor) is sent before the MSG_READY that names its size, and an
exception's payload before the MSG_ERROR that stands for it.

Waiting: a side with nothing to read looks again for ``SPIN_S`` (when
every process has a CPU of its own; else for ``YIELD_SPIN_S``, giving
the CPU away between looks: see ``spin_s``), then sets its "asleep" flag, looks once more, and blocks on its socket (and the
producers' sentinels). The other side, after writing, sends MSG_WAKE over
the socket if it finds the flag set. Each side's flag store is followed by
a full memory barrier (a lock operation) before it looks again; the
consumer's store-then-look, once per burst of frees, has one too; the
producer's, after every message, has none (it would cost every batch), so
a consumer's wake may rarely be missed: blocking is therefore always
bounded (``BACKSTOP_S``, doubling up to ``BACKSTOP_MAX_S``) and the queue
looked at again.

Writes must become visible in program order (data before the number or
counter that publishes it), which x86 guarantees; elsewhere (ARM, POWER) Python offers no
barrier that orders plain stores, so there the messages travel over the
socket as a byte stream, whose system calls order memory (see ``mode``).
"""

from __future__ import annotations

import array
import os
import platform
import struct
import threading
from typing import Any

from shmfuel.prefetch import ring

SLOT = struct.Struct("<I")
ENTRY = 64  # bytes per message
MESSAGE = struct.Struct("<IIQQQ")  # after the message's number

# indexes of 8-byte words
MESSAGES_READ = 8
FREES_WRITTEN = 16
FREES_READ = 24
CONSUMER_ASLEEP = 32
PRODUCER_ASLEEP = 40
ENTRIES = 384  # bytes
SPARE = 16  # message entries beyond one per slot (ends, errors)
FULL, PUSHED, WAKE = 0, 1, 2  # what push_message did

# Longer than the other side takes to wake up (a process blocked on its
# socket took about 0.2 ms to run again on a 2-core VM): with a shorter spin
# the two sides can settle into taking turns sleeping, each waking the
# other once per burst, at a fraction of the rate.
SPIN_S = 500e-6
# With more processes than CPUs, looks a sched_yield apart for this long:
# 1.6x the 512-byte batches of 2 producers on 2 CPUs, against sleeping at
# once, and no change with slow batches.
YIELD_SPIN_S = 100e-6
BACKSTOP_S = 0.001
BACKSTOP_MAX_S = 0.05


def layout_token(layout_id: int, generation: int, slot: int) -> int:
    """The layout id a MSG_READY carries: the producer's id of the batch's
    layout, the slot's segment (counted per slot, modulo 4096: a consumer
    is never that many segments behind) and the slot, in one word, unique
    to what the consumer must have cached to skip the header; 0 (read the
    header) if they do not fit."""
    if not layout_id or layout_id >= 1 << 32 or slot >= 1 << 20:
        return 0
    return layout_id << 32 | (generation & 0xFFF) << 20 | slot


def next_backstop(backstop: float, found: bool, woken: bool) -> float:
    """The bound on the next wait, after a wait bounded by ``backstop``
    that ``found`` something on the page or not, and that its socket
    ended (``woken``) or that timed out: back to ``BACKSTOP_S`` once
    something came, doubled (up to ``BACKSTOP_MAX_S``) after each wait
    that timed out with nothing, so an idle side wakes 20 times a second
    at most and a busy one at once."""
    if found:
        return BACKSTOP_S
    if woken:
        return backstop
    return min(2 * backstop, BACKSTOP_MAX_S)

_TSO = ("x86_64", "amd64", "i386", "i686", "x86")
ENV = "SHMFUEL_RING_NOTIFY"


def mode() -> str:
    """``'shared'`` (control pages) or ``'socket'`` (messages on sockets).

    Shared where stores are seen in order (x86); ``SHMFUEL_RING_NOTIFY``
    overrides it.
    """
    chosen = os.environ.get(ENV, "").strip().lower()
    if chosen in ("shared", "socket"):
        return chosen
    if chosen:
        raise ValueError(f"{ENV} must be 'shared' or 'socket', got "
                         f"{chosen!r}; unset it to choose by platform")
    return "shared" if platform.machine().lower() in _TSO else "socket"


_barrier_lock = threading.Lock()


def barrier() -> None:
    """A full memory barrier (a locked instruction on x86)."""
    _barrier_lock.acquire()
    _barrier_lock.release()


def spin_s(workers: int) -> tuple[float, bool]:
    """How long to look again before sleeping, with ``workers`` producers,
    and whether to give the CPU away between looks.

    With a CPU for the consumer and each producer, the looks follow each
    other for ``SPIN_S``. With fewer CPUs that would take the CPU from the
    very process being waited for; instead each look is followed by
    ``sched_yield``, which lets another process that is ready run first,
    for ``YIELD_SPIN_S``: a wait for a process that only needed a CPU ends
    without the 0.2 ms a wake-up from sleep takes.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        cpus = os.cpu_count() or 1
    if workers + 1 <= cpus:
        return SPIN_S, False
    return YIELD_SPIN_S, True


def page_size(slots: int) -> int:
    return ring.round_up(ENTRIES + (slots + SPARE) * ENTRY
                         + slots * SLOT.size)


class ControlPage:
    """One side's handle on a control page (``buffer``, writable)."""

    def __init__(self, buffer: Any, slots: int) -> None:
        if len(buffer) < page_size(slots):
            raise ValueError(f"a control page for {slots} slots needs "
                             f"{page_size(slots)} bytes, got {len(buffer)}")
        self.buffer = buffer
        self.words = words = memoryview(buffer).cast("Q")
        self.slots = slots
        self.capacity = slots + SPARE
        # the frees queue as u32 items (one indexed store or load each)
        frees_at = ENTRIES + self.capacity * ENTRY
        self.frees = memoryview(buffer)[
            frees_at:frees_at + slots * SLOT.size].cast("I")
        # each side's own counters, mirrored here
        self.messages_read = words[MESSAGES_READ]
        self.messages_written = self.messages_read + sum(
            words[(ENTRIES + n * ENTRY) // 8] > self.messages_read
            for n in range(self.capacity))
        self.frees_written = words[FREES_WRITTEN]
        self.frees_read = words[FREES_READ]
        # The other side's counters as last read: looked at again only when
        # they say a queue is full (each look moves a cache line between
        # the cores, which costs more than the rest of a push).
        self.seen_messages_read = self.messages_read
        self.seen_frees_read = self.frees_read

    # -- producer -> consumer ----------------------------------------------
    def push_message(self, kind: int, a: int = 0, b: int = 0, layout_id: int = 0,
                     busy_ns: int = 0) -> int:
        """Append a message: ``FULL`` (0: nothing written), ``PUSHED``, or
        ``WAKE``: pushed, and the consumer sleeps (its flag is cleared here;
        send it MSG_WAKE)."""
        words, written = self.words, self.messages_written
        if written - self.seen_messages_read >= self.capacity:
            self.seen_messages_read = words[MESSAGES_READ]
            if written - self.seen_messages_read >= self.capacity:
                return FULL
        at = ENTRIES + written % self.capacity * ENTRY
        MESSAGE.pack_into(self.buffer, at + 8, kind, a, b, layout_id, busy_ns)
        self.messages_written = words[at >> 3] = written + 1  # publish
        if words[CONSUMER_ASLEEP]:
            return self.wake_consumer()
        return PUSHED

    def wake_consumer(self) -> int:
        """After a push that found the consumer asleep: clear its flag;
        ``WAKE`` (the caller sends it MSG_WAKE)."""
        self.words[CONSUMER_ASLEEP] = 0
        return WAKE

    def messages_waiting(self, count: int = 1) -> bool:
        """Whether at least ``count`` (at most ``capacity``) messages are
        written and not yet read: messages are written in order, so the
        last of them tells."""
        last = self.messages_read + count - 1
        return bool(self.words[(ENTRIES + last % self.capacity * ENTRY) >> 3]
                    == last + 1)

    def pop_message(self) -> tuple[int, int, int, int, int] | None:
        """The next message, or None if it is not written yet."""
        read = self.messages_read
        at = ENTRIES + read % self.capacity * ENTRY
        number = self.words[at >> 3]
        if number != read + 1:
            if number and number != read + 1 - self.capacity:
                raise ValueError(f"corrupt control page: message "
                                 f"{number - 1} where {read} was due")
            return None
        message = MESSAGE.unpack_from(self.buffer, at + 8)
        self.messages_read = self.words[MESSAGES_READ] = read + 1
        return message

    def busy_ns(self) -> int:
        """The producer's busy ns as of the newest message on the page
        (every message carries it, and it only grows)."""
        words = self.words
        return max(words[(ENTRIES + n * ENTRY) // 8 + 4]
                   for n in range(self.capacity))

    def pop_messages(self) -> list[tuple[int, int, int, int, int]]:
        """Every message written and not yet read, in order."""
        messages = []
        while (message := self.pop_message()) is not None:
            messages.append(message)
        return messages

    # -- consumer -> producer ----------------------------------------------
    def give_back(self, slots: list[int]) -> bool:
        """The consumer's flush: tell the producer how far its messages
        were read (a reader may advance ``messages_read`` alone), append
        ``slots`` to the frees, and say whether the producer sleeps (its
        flag, cleared here: send it MSG_WAKE). The flag is read after a
        barrier, so the frees are seen before it (see the module doc)."""
        words = self.words
        words[MESSAGES_READ] = self.messages_read
        if not slots:
            return False
        frees, written, capacity = self.frees, self.frees_written, self.slots
        count = len(slots)
        if written + count - self.seen_frees_read > capacity:
            self.seen_frees_read = words[FREES_READ]
            if written + count - self.seen_frees_read > capacity:
                raise ValueError("more slots freed than the producer has: "
                                 "a slot was freed twice")
        start = written % capacity
        end = start + count
        if end <= capacity:
            frees[start:end] = array.array("I", slots)
        else:  # around the end of the queue
            split = capacity - start
            frees[start:] = array.array("I", slots[:split])
            frees[:end - capacity] = array.array("I", slots[split:])
        self.frees_written = words[FREES_WRITTEN] = written + count
        _barrier_lock.acquire()  # barrier(), inlined
        _barrier_lock.release()
        if words[PRODUCER_ASLEEP]:
            words[PRODUCER_ASLEEP] = 0
            return True
        return False

    def pop_frees(self) -> list[int]:
        read = self.frees_read
        written = self.words[FREES_WRITTEN]
        if written == read:
            return []
        capacity, frees = self.slots, self.frees
        start, end = read % capacity, written % capacity
        if start < end:
            popped = frees[start:end].tolist()
        else:  # wrapped around (or every slot at once)
            popped = frees[start:].tolist() + frees[:end].tolist()
        self.frees_read = self.words[FREES_READ] = written
        return popped

    def frees_waiting(self) -> bool:
        return bool(self.words[FREES_WRITTEN] != self.frees_read)

    # -- sleeping ------------------------------------------------------------
    def fall_asleep(self, flag: int) -> None:
        """Set our flag (CONSUMER_ASLEEP or PRODUCER_ASLEEP), then a barrier:
        the caller must look at its queue once more before blocking."""
        self.words[flag] = 1
        barrier()

    def wake_up(self, flag: int) -> None:
        self.words[flag] = 0


def create(slots: int) -> tuple[int, Any]:
    """A new zeroed control page: its file descriptor and a mapping."""
    size = page_size(slots)
    fd = ring.create_segment(size)
    try:
        return fd, ring.map_segment(fd, size)
    except BaseException:
        os.close(fd)
        raise
