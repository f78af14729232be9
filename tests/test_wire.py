"""The bridge's wire format, without sockets."""

import json
import math

import numpy
import pytest

from shmfuel.bridge import wire


def roundtrip(batch, allow_pickle=False):
    frames = wire.encode_batch(3, 4, batch, allow_pickle)
    # what a socket would deliver: separate bytes-like frames
    frames = wire_frames(frames)
    header, rest = wire.decode(frames, wire.SERVER_TYPES)
    assert header["type"] == wire.BATCH and (header["epoch"], header["seq"]) == (3, 4)
    return wire.decode_batch(header, rest, allow_pickle)


def wire_frames(frames):
    return [bytes(memoryview(getattr(f, "buffer", f)).cast("B")) for f in frames]


def test_arrays_travel_as_raw_frames():
    a = numpy.arange(12, dtype=">f4").reshape(3, 4)[:, ::2]
    big = numpy.arange(wire.INLINE_BYTES // 8, dtype="<f8")
    assert len(wire.encode_batch(0, 0, (a,))) == 1  # small: inline
    assert len(wire.encode_batch(0, 0, (a, big))) == 3  # a frame each
    for batch in [(a,), (a, big), (big, a, a)]:
        out = roundtrip(batch)
        for sent, got in zip(batch, out):
            numpy.testing.assert_array_equal(got, sent)
            assert got.dtype == sent.dtype


def test_inline_arrays_are_aligned_and_bounded():
    batch = (numpy.arange(3, dtype="u1"), numpy.arange(5, dtype="<f8"),
             numpy.zeros((0, 2), dtype="<i4"), numpy.full((), 2.5))
    (frame,) = wire.encode_batch(0, 0, batch)
    base = numpy.frombuffer(frame, numpy.uint8).ctypes.data
    header, rest = wire.decode([frame], wire.SERVER_TYPES)
    for decoder in (wire.BatchDecoder(), wire.BatchDecoder()):
        for out in (decoder.decode(header, rest), decoder.batch([frame])[2],
                    decoder.batch([frame])[2]):
            for sent, got in zip(batch, out):
                numpy.testing.assert_array_equal(got, sent)
                assert got.shape == sent.shape and got.dtype == sent.dtype
                assert (got.ctypes.data - base) % 16 == 0
    cut = frame[:-8]  # the last array's bytes cut short
    with pytest.raises(wire.WireError, match="runs past the"):
        wire.BatchDecoder().decode(*wire.decode([cut], wire.SERVER_TYPES))
    with pytest.raises(wire.WireError, match="malformed 'array' item"):
        decoder.batch([cut])  # a decoder that knows the layout


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
    ([b'{"v": %d, "type": "launch"}' % wire.VERSION], "unexpected message type 'launch'"),
    ([b'{"v": 1, "type": "batch", "epoch": 0, "seq": 0, "items": []}'], "protocol version 1"),
    ([b"\x00sf"], "not a header"),
    ([b"\x00zz" + bytes(17)], "not a header"),
    ([wire.BATCH_HEAD.pack(wire.BATCH_MAGIC, 99, 2, 0, 0) + b"[]"], "protocol version 99"),
    ([wire.BATCH_HEAD.pack(wire.BATCH_MAGIC, wire.VERSION, 9, 0, 0) + b"[]"],
     "items .9 bytes. run past the end"),
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
    assert header == {"v": wire.VERSION, "type": "epoch", "epoch": 2, "credits": 10}
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


def test_batch_headers_are_binary_and_only_expected_from_servers():
    frames = wire.encode_batch(7, 123456789012, (numpy.zeros(2, "<f4"),))
    assert frames[0][:4] == wire.BATCH_MAGIC + bytes([wire.VERSION])
    header, rest = wire.decode(frames, wire.SERVER_TYPES)
    assert (header["type"], header["epoch"], header["seq"]) == ("batch", 7, 123456789012)
    with pytest.raises(wire.WireError, match="unexpected message type 'batch'"):
        wire.decode(frames, wire.CLIENT_TYPES)
    with pytest.raises(wire.WireError, match="items are not JSON"):
        wire.decode_batch(dict(header, items_json=b"[{"), rest)


@pytest.mark.parametrize("rows", [2, 2048])  # inline, a frame each
def test_array_layouts_are_remembered_on_both_ends(rows):
    encoder, decoder = wire.BatchEncoder(), wire.BatchDecoder()
    for seq in range(3):
        a = numpy.arange(rows * 3, dtype="<i2").reshape(rows, 3) + seq
        b = numpy.full((rows * 4,), seq, dtype=">f8")[::2]  # not contiguous
        frames = wire_frames(encoder.encode(0, seq, (a, b)))
        epoch, got_seq, (out_a, out_b) = decoder.batch(frames)
        assert (epoch, got_seq) == (0, seq)
        numpy.testing.assert_array_equal(out_a, a)
        numpy.testing.assert_array_equal(out_b, b)
        assert (out_a.dtype, out_b.dtype) == (a.dtype, b.dtype)
    assert len(encoder.layouts) == 1 and len(decoder.layouts) == 1
    # a remembered layout still checks the frames it is given
    short = [frames[0][:-3]] + [f[:-3] for f in frames[1:]]
    with pytest.raises(wire.WireError, match="malformed 'array' item"):
        decoder.batch(short)
    if len(frames) > 1:
        with pytest.raises(wire.WireError, match="malformed 'array' item"):
            decoder.batch(frames[:2])
    # values that are not arrays take the full path, and are not remembered
    (label,) = decoder.batch(encoder.encode(0, 9, ([1, 2],)))[2]
    assert label == [1, 2] and len(decoder.layouts) == 1
    assert decoder.batch(wire.encode(wire.HEARTBEAT)) is None


def test_values_inlined_in_the_items_are_not_shared_between_batches():
    decoder = wire.BatchDecoder()
    frames = wire.encode_batch(0, 0, (["a", "b"],))
    first = decoder.decode(*wire.decode(frames, wire.SERVER_TYPES))
    first[0].append("mutated")
    second = decoder.decode(*wire.decode(frames, wire.SERVER_TYPES))
    assert second == [["a", "b"]]


def test_big_arrays_are_sent_as_they_are_only_when_nothing_else_can_write_them():
    import weakref
    n = wire.INLINE_BYTES // 8  # a frame of its own
    made = []

    def fresh():
        array = numpy.ones(n)
        made.append(weakref.ref(array))
        return array
    encoder = wire.BatchEncoder()
    (_, sent) = encoder.encode(0, 0, (fresh(),))
    assert sent is made[0]()  # nobody else holds it: no copy
    held = numpy.ones(n)  # the stream keeps it, and may write into it
    (_, sent) = encoder.encode(0, 1, (held,))
    assert type(sent) is wire.Copied and sent.buffer is held  # copied as sent
    base = numpy.ones(n)
    (_, sent) = encoder.encode(0, 2, (base[:],))  # a view: its base may change
    assert type(sent) is wire.Copied and sent.buffer.base is base
    (_, sent) = wire.BatchEncoder(share=True).encode(0, 3, (held,))
    assert sent is held  # the caller vouches for it (a Prefetcher's views)
    for frames in (encoder.encode(0, 4, (held,)), [encoder.encode(0, 5, (held,))[0], held]):
        (out,) = wire.BatchDecoder().batch(frames)[2]
        numpy.testing.assert_array_equal(out, held)
    # beside values that are not arrays: copied unless shared
    sent = encoder.encode(0, 6, (held, ["a"]))[1]
    assert type(sent) is wire.Copied and sent.buffer is held
    sent = wire.BatchEncoder(share=True).encode(0, 7, (held, ["a"]))[1]
    assert sent is held


def test_bundles_carry_one_frame_batches():
    batches = [wire.encode_batch(0, seq, (numpy.full(3, seq),))[0] for seq in range(3)]
    frames = wire.bundle(batches)
    assert wire.unbundle(frames) == batches
    decoder = wire.BatchDecoder()
    assert [int(decoder.batch([b])[2][0][0]) for b in wire.unbundle(frames)] == [0, 1, 2]
    assert wire.unbundle(batches) is None  # a batch is not a bundle
    assert wire.unbundle(wire.encode(wire.HEARTBEAT)) is None
    with pytest.raises(wire.WireError, match="empty bundle"):
        wire.unbundle(frames[:1])
    with pytest.raises(wire.WireError, match="protocol version 9"):
        wire.unbundle([wire.BUNDLE_HEAD.pack(wire.BUNDLE_MAGIC, 9)] + batches)


@pytest.mark.parametrize("value", ["3", -1, 2.0, True, None, [1]])
def test_counts_in_headers_are_non_negative_ints(value):
    assert wire.count({"credits": 4}, "credits") == 4
    assert wire.count({}, "credits") == 0
    with pytest.raises(wire.WireError, match="'credits' must be a non-negative integer"):
        wire.count({"credits": value}, "credits")
