"""The bridge's wire format, without sockets."""

import json
import math

import numpy
import pytest

from shmfuel.bridge import wire


def roundtrip(batch, allow_pickle=False):
    frames = wire.encode_batch(3, 4, batch, allow_pickle)
    # what a socket would deliver: separate bytes-like frames
    frames = [bytes(memoryview(f).cast("B")) if not isinstance(f, bytes) else f
              for f in frames]
    header, rest = wire.decode(frames, wire.SERVER_TYPES)
    assert header["type"] == wire.BATCH and (header["epoch"], header["seq"]) == (3, 4)
    return wire.decode_batch(header, rest, allow_pickle)


def test_arrays_travel_as_raw_frames():
    a = numpy.arange(12, dtype=">f4").reshape(3, 4)[:, ::2]
    frames = wire.encode_batch(0, 0, (a,))
    assert len(frames) == 2
    (out,) = roundtrip((a,))
    numpy.testing.assert_array_equal(out, a)
    assert out.dtype == a.dtype


@pytest.mark.parametrize("value", [
    None, True, 3, -2.5, "text", b"\x00bytes", [1, [2, "x"]], (1, (2,)),
    {"a": 1, 2: [3]}, numpy.float32(1.5), numpy.int64(-7), numpy.bool_(True),
    [numpy.arange(3), numpy.arange(2)],
])
def test_values_arrive_equal_and_of_the_same_type(value):
    (out,) = roundtrip((value,))
    assert type(out) is type(value)
    assert repr(out) == repr(value)


def test_non_finite_floats_and_object_arrays():
    (nan, inf, objects) = roundtrip((math.nan, -math.inf,
                                     numpy.array([[1], [2, 3]], dtype=object)))
    assert math.isnan(nan) and inf == -math.inf
    assert objects.dtype == object and objects.tolist() == [[1], [2, 3]]


def test_unsafe_values_need_pickle_on_both_ends():
    value = numpy.ma.masked_array([1, 2], mask=[0, 1])
    with pytest.raises(wire.UnsafeValueError, match="allow_pickle=True to both"):
        wire.encode_batch(0, 0, (value,))
    frames = wire.encode_batch(0, 0, (value,), allow_pickle=True)
    header, rest = wire.decode(frames, wire.SERVER_TYPES)
    with pytest.raises(wire.UnsafeValueError, match="trust the server"):
        wire.decode_batch(header, rest)
    (out,) = wire.decode_batch(header, rest, allow_pickle=True)
    assert out.mask.tolist() == [False, True]


@pytest.mark.parametrize("frames,message", [
    ([], "empty message"),
    ([b"\xff\xfe"], "not a JSON header"),
    ([b"[1]"], "the header is list"),
    ([b'{"v": 99, "type": "batch"}'], "protocol version 99"),
    ([b'{"v": 1, "type": "launch"}'], "unexpected message type 'launch'"),
])
def test_malformed_headers(frames, message):
    with pytest.raises(wire.WireError, match=message):
        wire.decode(frames, wire.SERVER_TYPES)


@pytest.mark.parametrize("items,message", [
    ([{"t": "array", "dtype": "<f4", "shape": [2], "frame": 5}], "refers to frame 5"),
    ([{"t": "array", "dtype": "|O", "shape": [1], "frame": 0}], "object dtypes"),
    ([{"t": "rocket"}], "unknown item tag 'rocket'"),
    ([["raw list"]], "malformed item"),
    ([{"t": "array", "dtype": "<f8", "shape": [3], "frame": 0}], "malformed 'array' item"),
    (None, "without an item list"),
])
def test_malformed_items(items, message):
    header = {"v": 1, "type": "batch", "epoch": 0, "seq": 0, "items": items}
    with pytest.raises(wire.WireError, match=message):
        wire.decode_batch(header, [b"\x00" * 4])


def test_control_messages():
    frames = wire.encode(wire.EPOCH, epoch=2, credits=10)
    header, rest = wire.decode(frames, wire.CLIENT_TYPES)
    assert header == {"v": 1, "type": "epoch", "epoch": 2, "credits": 10}
    assert rest == []
    assert json.loads(frames[0])["type"] == "epoch"


def test_plain_lists_keep_values_and_types():
    import enum

    class Level(enum.IntEnum):
        LOW = 1
    cases = {
        "json": [[1, 2.5, "a", None, True], []],
        "numlist": [[1, 2], [3, -4]],
    }
    for tag, plain in cases.items():
        frames = wire.encode_batch(0, 0, (plain,))
        assert f'"t":"{tag}"'.encode() in frames[0]
        (out,) = roundtrip((plain,))
        assert out == plain and repr(out) == repr(plain)
    for value in ([[1.5, 2.0]], [[1], [2, 3]], [2**70], [[], []], [(1, 2)],
                  [{"a": 1}], [math.inf], [b"x"]):
        (out,) = roundtrip((value,))
        assert repr(out) == repr(value)
    with pytest.raises(wire.UnsafeValueError, match="Level cannot be sent"):
        wire.encode_batch(0, 0, ([Level.LOW],))
