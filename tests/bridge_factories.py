"""Streams that bridge tests serve: ``python -m shmfuel serve bridge_factories:NAME``."""

import time

from helpers import sequential_stream, shuffled_stream

from shmfuel.transformers import Mapping


def shuffled():
    return shuffled_stream()


def fails_at_third(data):
    if int(data[0][0]) == 4:
        raise KeyError("example 4 is missing")
    return data


def failing():
    return Mapping(sequential_stream(), fails_at_third)


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
