"""Streams that bridge tests serve: ``python -m shmfuel serve bridge_factories:NAME``."""

import sys
import time

from helpers import sequential_stream, shuffled_stream

from shmfuel.datasets import IndexableDataset
from shmfuel.schemes import SequentialExampleScheme
from shmfuel.streams import DataStream
from shmfuel.transformers import Mapping, Transformer


def shuffled():
    return shuffled_stream()


def lower_priority(worker):
    import os
    os.nice(2)


def fails_at_third(data):
    if int(data[0][0]) == 4:
        raise KeyError("example 4 is missing")
    return data


def failing():
    return Mapping(sequential_stream(), fails_at_third)


def exits_at_third(data):
    if int(data[0][0]) == 4:
        sys.exit(3)
    return data


def exiting():
    return Mapping(sequential_stream(), exits_at_third)


def slow_batch(data):
    time.sleep(0.8)
    return data


def slow():
    return Mapping(sequential_stream(n=4), slow_batch)


def lambdas():
    return Mapping(sequential_stream(), lambda d: (d[0], object()), add_sources=("thing",))


def stuck_batch(data):
    time.sleep(120)
    return data


def stuck():
    return Mapping(sequential_stream(n=4), stuck_batch)


class _Reused:
    """Writes every batch into the same buffer, as a pipeline that
    preallocates its output may."""

    def __init__(self):
        import numpy
        self.buffer = numpy.empty(1 << 15)  # 256 KiB: a frame of its own

    def __call__(self, data):
        self.buffer[...] = data[0][0]
        return (self.buffer,)


def reuses_its_buffer():
    return Mapping(sequential_stream(n=16, batch_size=1), _Reused())


def sequential():
    return sequential_stream(n=40, batch_size=2)


class KeepEven(Transformer):
    """Pulls as many items as it takes to find an even one: not per-batch."""

    def get_data(self, request=None):
        while True:
            data = next(self.child_epoch_iterator)
            if data[0] % 2 == 0:
                return data


def keep_even():
    return KeepEven(DataStream(IndexableDataset({"x": list(range(12))}),
                               iteration_scheme=SequentialExampleScheme(12)))
