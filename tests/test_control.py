"""The control page's queues and flags, without processes."""

from __future__ import annotations

import mmap
import random

import pytest

from shmfuel.prefetch import control, layout


def pages(slots=4):
    """Two sides' handles on one page, as producer and consumer hold them."""
    buffer = mmap.mmap(-1, control.page_size(slots))
    return control.ControlPage(buffer, slots), control.ControlPage(buffer, slots)


def test_messages_arrive_in_order_across_many_wraps():
    producer, consumer = pages(slots=3)
    sent, received = [], []
    for n in range(200):
        message = (layout.MSG_READY, n % 3, 4096 * (n % 5 + 1), n, 10 * n)
        assert producer.push_message(*message)
        sent.append(message)
        if n % 7 == 6:
            received += consumer.pop_messages()
    received += consumer.pop_messages()
    assert received == sent
    assert consumer.pop_messages() == []
    assert not consumer.messages_waiting()


def test_messages_waiting_counts_what_is_written_and_not_read():
    producer, consumer = pages(slots=2)
    capacity = 2 + control.SPARE
    for _ in range(3):  # and around the end of the queue
        for n in range(capacity - 1):
            producer.push_message(layout.MSG_END, 0, n)
            assert consumer.messages_waiting(n + 1)
            assert not consumer.messages_waiting(n + 2)
        consumer.pop_message()
        assert consumer.messages_waiting(capacity - 2)
        assert not consumer.messages_waiting(capacity - 1)
        consumer.pop_messages()
        assert not consumer.messages_waiting()


def test_a_full_message_queue_refuses_and_writes_nothing():
    producer, consumer = pages(slots=2)
    capacity = 2 + control.SPARE
    for n in range(capacity):
        assert producer.push_message(layout.MSG_END, 0, n)
    assert not producer.push_message(layout.MSG_END, 0, 999)
    assert consumer.messages_waiting(capacity)
    assert [m[2] for m in consumer.pop_messages()] == list(range(capacity))
    assert producer.push_message(layout.MSG_END, 0, 999)
    assert consumer.pop_messages() == [(layout.MSG_END, 0, 999, 0, 0)]


def test_reads_taken_alone_reach_the_producer_once_published():
    producer, consumer = pages(slots=2)
    capacity = 2 + control.SPARE
    for n in range(capacity):
        assert producer.push_message(layout.MSG_END, 0, n)
    consumer.messages_read += capacity  # taken without pop_message
    assert not producer.push_message(layout.MSG_END, 0, 999)  # not told
    assert not consumer.give_back([])  # nothing freed: nobody to wake
    assert producer.push_message(layout.MSG_END, 0, 999)


def test_busy_ns_is_the_newest_message_s_across_wraps():
    producer, consumer = pages(slots=2)
    assert consumer.busy_ns() == 0
    for n in range(1, 50):
        producer.push_message(layout.MSG_READY, n % 2, 4096, 1, 1000 * n)
        assert consumer.busy_ns() == 1000 * n
        consumer.pop_message()


def test_a_layout_token_names_layout_segment_and_slot():
    tokens = {control.layout_token(layout_id, generation, slot)
              for layout_id in (1, 2, 2**32 - 1) for generation in (1, 2, 4095)
              for slot in (0, 1, 2**20 - 1)}
    assert len(tokens) == 27 and 0 not in tokens
    # the segment counts modulo 4096
    assert control.layout_token(5, 4097, 3) == control.layout_token(5, 1, 3)
    # what does not fit (or no layout) says: read the header
    assert control.layout_token(2**32, 1, 0) == 0
    assert control.layout_token(1, 1, 2**20) == 0
    assert control.layout_token(0, 1, 1) == 0


def test_frees_arrive_in_order_and_a_double_free_is_refused():
    producer, consumer = pages(slots=4)
    assert not producer.frees_waiting()
    consumer.give_back([2, 0])
    assert producer.frees_waiting()
    consumer.give_back([3])
    assert producer.pop_frees() == [2, 0, 3]
    assert producer.pop_frees() == []
    for _ in range(10):  # wrap around
        consumer.give_back([1, 2, 3, 0])
        assert producer.pop_frees() == [1, 2, 3, 0]
    consumer.give_back([0, 1, 2, 3])
    with pytest.raises(ValueError, match="freed twice"):
        consumer.give_back([0])


@pytest.mark.parametrize("slots", [1, 3, 16])
def test_frees_of_every_burst_size_come_back_in_order(slots):
    # bursts that end anywhere in the queue, wrapped around or not; a slot
    # can be freed again once the producer has taken it back
    producer, consumer = pages(slots=slots)
    rng = random.Random(slots)
    freeable, sent, got = list(range(slots)), [], []
    for _ in range(500):
        rng.shuffle(freeable)
        cut = rng.randint(0, len(freeable))
        burst, freeable = freeable[:cut], freeable[cut:]
        consumer.give_back(burst)
        sent += burst
        if rng.random() < 0.7:
            popped = producer.pop_frees()
            got += popped
            freeable += popped
    got += producer.pop_frees()
    assert got == sent and len(sent) > 100


def test_a_corrupt_message_number_is_an_error_not_garbage():
    producer, consumer = pages(slots=2)
    producer.push_message(layout.MSG_END, 0, 1)
    producer.words[control.ENTRIES // 8] = 10**6
    with pytest.raises(ValueError, match="corrupt control page"):
        consumer.pop_messages()


def test_asleep_flags_are_cleared_by_the_side_that_wakes():
    producer, consumer = pages()
    consumer.fall_asleep(control.CONSUMER_ASLEEP)
    assert producer.push_message(layout.MSG_END, 0, 0) == control.WAKE
    assert producer.push_message(layout.MSG_END, 0, 1) == control.PUSHED  # once
    producer.fall_asleep(control.PRODUCER_ASLEEP)
    producer.wake_up(control.PRODUCER_ASLEEP)  # it woke by itself
    assert not consumer.give_back([0])


def test_giving_slots_back_says_when_the_producer_sleeps():
    producer, consumer = pages()
    assert not consumer.give_back([1])
    producer.fall_asleep(control.PRODUCER_ASLEEP)
    assert not consumer.give_back([])  # nothing to wake it for
    assert consumer.give_back([2, 0])
    assert not consumer.give_back([3])  # once
    assert producer.pop_frees() == [1, 2, 0, 3]


def test_a_push_says_when_the_consumer_sleeps():
    producer, consumer = pages()
    assert producer.push_message(layout.MSG_READY, 0, 4096) == control.PUSHED
    consumer.fall_asleep(control.CONSUMER_ASLEEP)
    assert producer.push_message(layout.MSG_READY, 1, 4096) == control.WAKE
    assert producer.push_message(layout.MSG_READY, 2, 4096) == control.PUSHED
    assert [m[1] for m in consumer.pop_messages()] == [0, 1, 2]


def test_a_new_handle_continues_from_the_counters_in_the_page():
    producer, consumer = pages()
    producer.push_message(layout.MSG_READY, 1, 4096, 7, 100)
    consumer.pop_messages()
    producer.push_message(layout.MSG_READY, 2, 4096, 7, 200)
    again = control.ControlPage(consumer.buffer, 4)
    assert again.pop_messages() == [(layout.MSG_READY, 2, 4096, 7, 200)]


def test_a_page_too_small_is_refused():
    with pytest.raises(ValueError, match="needs"):
        control.ControlPage(bytearray(64), 4)


def test_mode_follows_the_environment(monkeypatch):
    monkeypatch.setenv(control.ENV, "socket")
    assert control.mode() == "socket"
    monkeypatch.setenv(control.ENV, " Shared ")
    assert control.mode() == "shared"
    monkeypatch.setenv(control.ENV, "pipes")
    with pytest.raises(ValueError, match="must be 'shared' or 'socket'"):
        control.mode()
    monkeypatch.delenv(control.ENV)
    assert control.mode() in ("shared", "socket")


def test_spinning_back_to_back_only_when_every_process_has_a_cpu(monkeypatch):
    monkeypatch.setattr(control.os, "sched_getaffinity", lambda pid: {0, 1},
                        raising=False)
    assert control.spin_s(1) == (control.SPIN_S, False)  # consumer + 1 producer
    # three processes, two CPUs: each look gives the CPU away, for less long
    assert control.spin_s(2) == (control.YIELD_SPIN_S, True)
    assert control.YIELD_SPIN_S < control.SPIN_S


def test_wake_messages_decode():
    messages, rest = layout.decode_messages(
        layout.encode_message(layout.MSG_WAKE) * 2 + b"\x01")
    assert messages == [(layout.MSG_WAKE, 0, 0)] * 2
    assert rest == b"\x01"


@pytest.mark.timeout(30)
def test_a_producer_facing_a_full_queue_waits_for_the_consumer():
    import os
    import socket
    import threading

    from shmfuel.prefetch.producer import Producer
    ours, theirs = socket.socketpair()
    fd, page = control.create(2)
    os.close(fd)
    try:
        producer = Producer(ours, 0, 1, 2, os.getpid())
        producer.control = control.ControlPage(page, 2)
        consumer = control.ControlPage(page, 2)
        capacity = 2 + control.SPARE
        for n in range(capacity):
            producer.publish(layout.MSG_END, 0, n)
        drained = []
        timer = threading.Timer(0.05, lambda: drained.extend(consumer.pop_messages()))
        timer.start()
        producer.publish(layout.MSG_END, 0, 99)  # waits until the timer drains
        timer.join()
        assert [m[2] for m in drained] == list(range(capacity))
        assert consumer.pop_messages() == [(layout.MSG_END, 0, 99, 0, 0)]
    finally:
        ours.close()
        theirs.close()


def test_the_backstop_doubles_while_nothing_comes_and_resets_when_something_does():
    backstop, waits = control.BACKSTOP_S, []
    for _ in range(9):  # timed out with nothing
        waits.append(backstop)
        backstop = control.next_backstop(backstop, found=False, woken=False)
    assert waits[:6] == [0.001, 0.002, 0.004, 0.008, 0.016, 0.032]
    assert waits[6:] == [control.BACKSTOP_MAX_S] * 3 == [0.05] * 3
    # woken by the socket (a wake message, a new segment) with nothing on
    # the page: the bound stays; something on the page: back to the start
    assert control.next_backstop(0.016, found=False, woken=True) == 0.016
    assert control.next_backstop(0.05, found=True, woken=False) == control.BACKSTOP_S
    assert control.next_backstop(0.05, found=True, woken=True) == control.BACKSTOP_S
