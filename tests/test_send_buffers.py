"""The bridge's pool of buffers for large frames copied on sending: pure,
no sockets (a held reference stands for a message pyzmq has not sent yet)."""

import numpy

from shmfuel.bridge import SendBuffers

BIG = SendBuffers.POOLED_FROM


def _array(value, nbytes=BIG, dtype=numpy.float32):
    return numpy.full(nbytes // numpy.dtype(dtype).itemsize, value, dtype)


def test_a_copy_holds_the_array_s_bytes():
    pool = SendBuffers()
    value = numpy.arange(BIG // 8, dtype=numpy.float64).reshape(4, -1)
    copy = pool.copy(value)
    assert copy.dtype == numpy.uint8 and copy.nbytes == value.nbytes
    assert (copy.view(numpy.float64).reshape(4, -1) == value).all()
    assert not numpy.shares_memory(copy, value)


def test_small_arrays_are_left_to_pyzmq():
    assert SendBuffers().copy(_array(1, BIG - 4)) is None


def test_a_buffer_is_reused_only_once_nothing_else_references_it():
    pool = SendBuffers()
    first = pool.copy(_array(1))
    in_flight = first  # pyzmq's reference while the message is queued
    del first
    second = pool.copy(_array(2))
    assert second is not in_flight
    assert (in_flight.view(numpy.float32) == 1).all()  # not overwritten
    address = in_flight.ctypes.data
    del in_flight, second  # both sent
    third = pool.copy(_array(3))
    assert third.ctypes.data == address
    assert (third.view(numpy.float32) == 3).all()


def test_with_every_buffer_in_use_pyzmq_copies():
    pool = SendBuffers(per_size=2)
    held = [pool.copy(_array(n)) for n in range(2)]
    assert pool.copy(_array(9)) is None
    assert [float(h.view(numpy.float32)[0]) for h in held] == [0.0, 1.0]
    held.pop()
    assert float(pool.copy(_array(9)).view(numpy.float32)[0]) == 9.0


def test_only_the_most_recent_sizes_are_kept():
    pool = SendBuffers(sizes=2)
    for nbytes in (BIG, 2 * BIG, 3 * BIG):
        pool.copy(_array(0, nbytes))
    assert list(pool.pools) == [2 * BIG, 3 * BIG]
    pool.copy(_array(0, 2 * BIG))  # used again: now the most recent
    pool.copy(_array(0, 4 * BIG))
    assert list(pool.pools) == [2 * BIG, 4 * BIG]
