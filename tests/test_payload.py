"""How the stream travels to unforked producers: the segment codec, without processes."""

import mmap
import os
import pickle

import numpy

from shmfuel.prefetch import _payload


def test_a_stream_segment_shares_large_arrays_copy_on_write():
    def in_segment(array):
        base = array.base
        while isinstance(base, numpy.ndarray):
            base = base.base
        return isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)

    big = numpy.arange(2**18, dtype="float64")  # 2 MiB: out of band
    fortran = numpy.asfortranarray(numpy.ones((512, 512)))
    small = numpy.arange(10)
    payload = _payload.dumps({"big": big, "fortran": fortran, "small": small},
                             inherit=False)
    assert len(payload.buffers) == 2 and len(payload.data) < 10_000
    fd, size = _payload.to_segment(payload)
    try:
        first = _payload.loads(*_payload.from_segment(fd, size))
        second = _payload.loads(*_payload.from_segment(fd, size))
    finally:
        os.close(fd)
    for got in (first, second):
        numpy.testing.assert_array_equal(got["big"], big)
        numpy.testing.assert_array_equal(got["fortran"], fortran)
        assert got["fortran"].flags.f_contiguous
        numpy.testing.assert_array_equal(got["small"], small)
        # the large arrays are views of the mapped segment, page-aligned
        assert [in_segment(got[key]) for key in ("big", "fortran", "small")] == [
            True, True, False]
        assert got["big"].ctypes.data % 4096 == 0
    first["big"][:] = -1  # a write stays in the mapping that made it
    assert (second["big"] == big).all() and (first["big"] == -1).all()
    assert isinstance(payload.buffers[0], pickle.PickleBuffer)


def test_a_stream_without_large_arrays_needs_no_mapping():
    payload = _payload.dumps({"x": [1, 2, 3]}, inherit=False)
    fd, size = _payload.to_segment(payload)
    try:
        data, buffers = _payload.from_segment(fd, size)
    finally:
        os.close(fd)
    assert buffers == [] and _payload.loads(data) == {"x": [1, 2, 3]}
