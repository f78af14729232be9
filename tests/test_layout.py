"""The slot layout and message codecs, without processes."""

import numpy
import pytest

from shmfuel.prefetch import layout, ring


def roundtrip(batch, copy=False):
    plan = layout.plan_batch(batch, seq=7, epoch=3, busy_ns=11)
    buffer = bytearray(plan.size)
    layout.write_batch(buffer, plan)
    seq, epoch, busy, specs = layout.read_header(buffer)
    assert (seq, epoch, busy) == (7, 3, 11)
    owner = numpy.frombuffer(buffer, numpy.uint8)
    values, has_view = layout.read_batch(owner, specs, copy)
    return values, has_view, specs


def test_arrays_come_back_as_aligned_views():
    a = numpy.arange(12, dtype="<f4").reshape(3, 4)
    b = numpy.arange(5, dtype=">i8")
    (x, y), has_view, specs = roundtrip((a, b))
    assert has_view
    numpy.testing.assert_array_equal(x, a)
    numpy.testing.assert_array_equal(y, b)
    assert x.dtype == a.dtype and y.dtype == b.dtype
    assert all(spec.offset % layout.ALIGN == 0 for spec in specs)
    assert x.base is not None and x.flags.writeable


def test_non_contiguous_arrays_are_written_in_c_order():
    a = numpy.arange(20).reshape(4, 5)[:, ::2].T
    (x,), _, _ = roundtrip((a,))
    numpy.testing.assert_array_equal(x, a)
    assert x.flags.c_contiguous


def test_copy_gives_owned_arrays():
    (x,), has_view, _ = roundtrip((numpy.ones(3),), copy=True)
    assert not has_view and x.flags.owndata


@pytest.mark.parametrize("value", [
    ["a", "bc"], [[1], [2, 3]], numpy.array([[1], [2, 3]], dtype=object),
    numpy.zeros(2, dtype=[("a", "i4"), ("b", "f8")]), numpy.float32(2.5), 3,
    numpy.ma.masked_array([1, 2], mask=[0, 1]), b"bytes", None, (),
])
def test_other_values_come_back_equal_and_of_the_same_type(value):
    (out,), has_view, specs = roundtrip((value,))
    assert specs[0].kind == layout.PICKLED and not has_view
    assert type(out) is type(value)
    if isinstance(value, numpy.ma.MaskedArray):
        assert list(out.mask) == [False, True]
    if isinstance(value, numpy.ndarray):
        assert out.dtype == value.dtype
        assert repr(out) == repr(value)
    else:
        assert out == value


def test_empty_batch_and_zero_size_arrays():
    values, _, _ = roundtrip(())
    assert values == ()
    (x,), _, _ = roundtrip((numpy.zeros((0, 3)),))
    assert x.shape == (0, 3)


def test_large_offsets_are_planned_consistently():
    arrays = tuple(numpy.zeros(1, dtype="u1") for _ in range(300))
    values, _, specs = roundtrip(arrays)
    assert len(values) == 300
    assert specs[0].offset >= layout.FIXED.size


def test_read_header_rejects_foreign_bytes():
    with pytest.raises(ValueError, match="no shmfuel batch"):
        layout.read_header(bytes(64))


def test_messages_split_and_leftover():
    data = (layout.encode_message(layout.MSG_READY, 3)
            + layout.encode_message(layout.MSG_END, 0, 2**40))
    messages, rest = layout.decode_messages(data + data[:5])
    assert messages == [(layout.MSG_READY, 3, 0), (layout.MSG_END, 0, 2**40)]
    assert rest == data[:5]
    with pytest.raises(ValueError, match="unknown ring message type 99"):
        layout.decode_messages(layout.MESSAGE.pack(99, 0, 0))


def test_error_message_roundtrip():
    try:
        raise KeyError("missing thing")
    except KeyError as exc:
        encoded = layout.encode_error(exc, "Traceback: here")
    messages, rest = layout.decode_messages(encoded[:-3])
    assert messages == [] and rest == encoded[:-3]
    messages, rest = layout.decode_messages(encoded)
    (kind, _, payload), = messages
    exc, name, message, tb = layout.decode_error(payload)
    assert kind == layout.MSG_ERROR and rest == b""
    assert isinstance(exc, KeyError) and exc.args == ("missing thing",)
    assert (name, tb) == ("KeyError", "Traceback: here")


def test_unpicklable_exception_keeps_name_and_message():
    class Local(Exception):
        pass
    encoded = layout.encode_error(Local("boom"), "tb")
    (_, _, payload), = layout.decode_messages(encoded)[0]
    exc, name, message, _ = layout.decode_error(payload)
    assert exc is None and name.endswith("Local") and message == "boom"


def test_grown_size():
    assert ring.grown_size(10, 0) == ring.PAGE
    assert ring.grown_size(100, 4096) == 4096
    assert ring.grown_size(4097, 4096) == 8192
    assert ring.grown_size(5000, 40960) == 40960
    assert ring.grown_size(41000, 40960) == ring.round_up(51200)


def test_create_segment_failure_names_the_fix(monkeypatch):
    import errno
    import os

    def no_space(fd, offset, size):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(ring.SharedMemoryError, match=r"cannot reserve 2\.0 MiB .*No space"):
        ring.create_segment(2 * 2**20)


def test_segment_is_shared_between_mappings():
    import os
    fd = ring.create_segment(8192)
    try:
        first = ring.map_segment(fd, 8192)
        second = ring.map_segment(fd, 8192)
    finally:
        os.close(fd)
    first[:5] = b"hello"
    assert second[:5] == b"hello"
    first.close()
    second.close()

