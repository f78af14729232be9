"""Splitting requests between producers, without processes."""

import pickle

import numpy
import pytest

from shmfuel.datasets import IndexableDataset, IterableDataset
from shmfuel.prefetch.sharding import (
    Every,
    check_per_batch,
    per_batch,
    shard,
    why_not_shardable,
)
from shmfuel.schemes import ConstantScheme, SequentialExampleScheme, ShuffledScheme
from shmfuel.streams import DataStream
from shmfuel.transformers import Batch, Filter, Mapping, Merge, ScaleAndShift


def batches(stream):
    return [list(b[0]) for b in stream.get_epoch_iterator()]


def make():
    dataset = IndexableDataset({"x": numpy.arange(23)})
    return ScaleAndShift(DataStream(dataset, iteration_scheme=ShuffledScheme(23, 4)), 1, 0)


def test_every():
    assert list(Every(iter(range(10)), 1, 3)) == [1, 4, 7]
    it = Every(iter(range(10)), 0, 2)
    next(it)
    assert list(pickle.loads(pickle.dumps(it))) == [2, 4, 6, 8]


def test_shards_interleave_to_the_whole_epochs():
    whole = make()
    expected = [batches(whole) for _ in range(3)]
    shards = []
    for worker in range(3):
        copy = pickle.loads(pickle.dumps(make()))
        shard(copy, worker, 3)
        shards.append([batches(copy) for _ in range(3)])
    for epoch in range(3):
        merged = [shards[i % 3][epoch][i // 3] for i in range(len(expected[epoch]))]
        assert merged == expected[epoch]
        assert sum(len(s[epoch]) for s in shards) == len(expected[epoch])


@pytest.mark.parametrize("stream,reason", [
    (Batch(DataStream(IndexableDataset({"x": [1, 2]}),
                      iteration_scheme=SequentialExampleScheme(2)), ConstantScheme(1)),
     "Batch pulls a varying number"),
    (Filter(make(), lambda d: True), "Filter pulls"),
    (DataStream(IterableDataset([1, 2])), "no iteration scheme"),
    (Merge([make(), make()], ("a", "b")), "Merge is not a DataStream"),
])
def test_stateful_pipelines_are_refused(stream, reason):
    assert reason in why_not_shardable(stream)
    with pytest.raises(ValueError, match="cannot split this stream"):
        shard(stream, 0, 2)


def test_per_batch_pipeline_is_shardable():
    assert why_not_shardable(Mapping(make(), lambda d: d)) is None


def test_every_counts_what_it_hands_out():
    every = Every(iter(range(10)), 1, 3)
    assert every.taken == 0
    assert list(every) == [1, 4, 7]
    assert every.taken == 3


def test_per_batch_check_names_the_counts_and_the_fix():
    every = Every(iter(range(10)), 0, 2)
    next(every), next(every)
    check_per_batch(every, 2)  # one request per batch: fine
    for batches in (1, 3):
        with pytest.raises(ValueError, match=f"made {batches} batches from 2 "
                                             "requests.*needs workers=1"):
            check_per_batch(every, batches)


def test_the_sharded_scheme_keeps_the_epoch_s_requests():
    stream = make()
    scheme = shard(stream, 1, 2)
    assert scheme is stream.data_stream.iteration_scheme and scheme.requests is None
    iterator = stream.get_epoch_iterator()
    requests = scheme.requests
    next(iterator), next(iterator)
    assert requests.taken == 2
    stream.get_epoch_iterator()
    assert scheme.requests is not requests and scheme.requests.taken == 0


def test_per_batch_passes_a_per_batch_epoch_and_stops_a_batch_from_no_request():
    stream = make()
    scheme = shard(stream, 0, 2)
    assert len(list(per_batch(stream.get_epoch_iterator(), scheme))) == 3
    # a batch made without taking a request: refused when it is made
    epoch = stream.get_epoch_iterator()
    first = next(epoch)
    batches = per_batch(iter([first, first]), scheme)
    next(batches)
    with pytest.raises(ValueError, match="made 2 batches from 1 requests"):
        next(batches)
