"""Splitting a stream's requests between producers. Pure.

With ``workers=N``, producer ``k`` runs its own copy of the pipeline, but
the iteration scheme at the bottom of the pipeline only hands it requests
``k, k+N, k+2N, ...`` of each epoch. Every copy of the scheme holds the same
random state, so all producers agree on each epoch's requests, and the
consumer, taking batches from producers ``0, 1, ..., N-1, 0, ...`` in turn,
gets exactly the batches, in the same order, of one producer.

This is only true when each item the pipeline yields comes from one request
(a *per-batch* pipeline): transformers that pull a varying number of child
items (``Batch``, ``Cache``, ``Filter``, ``Unpack``, ``Window``) or join
streams (``Merge``) hold state across requests, and a stream without a
scheme (an ``IterableDataset``) has no requests to split. For those
:func:`why_not_shardable` says why, and the Prefetcher refuses
``workers > 1``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


class Every:
    """Items ``start, start+step, ...`` of an iterator; picklable.
    ``taken``: how many it has handed out."""

    def __init__(self, iterator: Iterator[Any], start: int, step: int) -> None:
        self.iterator = iterator
        self.start = start
        self.step = step
        self.skip = start
        self.taken = 0

    def __iter__(self) -> Every:
        return self

    def __next__(self) -> Any:
        for _ in range(self.skip):
            next(self.iterator)
        self.skip = self.step - 1
        item = next(self.iterator)
        self.taken += 1
        return item


class ShardedScheme:
    """The share ``worker`` of ``workers`` of another scheme's requests.
    ``requests``: the share of the epoch being iterated."""

    def __init__(self, scheme: Any, worker: int, workers: int) -> None:
        self.scheme = scheme
        self.worker = worker
        self.workers = workers
        self.requests_examples = scheme.requests_examples
        self.requests: Every | None = None

    def get_request_iterator(self) -> Every:
        self.requests = Every(self.scheme.get_request_iterator(), self.worker,
                              self.workers)
        return self.requests


def check_per_batch(requests: Every, batches: int) -> None:
    """Raise ValueError unless the pipeline made ``batches`` batches from as
    many of this epoch's ``requests``: with a batch that came from no
    request, or from several (a transformer that drops, splits or joins
    items), producers would no longer add up to one pipeline's batches."""
    taken = requests.taken
    if taken != batches:
        raise ValueError(
            f"cannot split this stream between producers: its pipeline made "
            f"{batches} batches from {taken} requests of its iteration "
            "scheme. With workers > 1 each batch must come from exactly one "
            "request (a per-batch pipeline: Mapping and other transformers "
            "that make one item from each child item); a transformer that "
            "drops, splits or joins items needs workers=1")


def _stateful_types() -> tuple[type, ...]:
    from shmfuel.transformers import Batch, Cache, Filter, MultiProcessing, Unpack
    from shmfuel.transformers.sequences import Window
    return (Batch, Cache, Filter, MultiProcessing, Unpack, Window)


def _bottom(stream: Any) -> tuple[Any, str | None]:
    from shmfuel.streams import DataStream
    from shmfuel.transformers import Transformer
    stateful = _stateful_types()
    while isinstance(stream, Transformer):
        if isinstance(stream, stateful) or stream.iteration_scheme:
            return None, (f"{type(stream).__name__} pulls a varying number "
                          "of items from its child")
        stream = stream.data_stream
    if not isinstance(stream, DataStream):
        return None, (f"{type(stream).__name__} is not a DataStream with an "
                      "iteration scheme")
    if not stream.iteration_scheme:
        return None, ("its DataStream has no iteration scheme, so there are "
                      "no requests to split")
    return stream, None


def why_not_shardable(stream: Any) -> str | None:
    """None if ``stream``'s requests can be split; else the reason."""
    return _bottom(stream)[1]


def per_batch(iterator: Iterator[Any], scheme: ShardedScheme) -> Iterator[Any]:
    """``iterator``'s items (an epoch of the stream ``scheme`` was sharded
    into), each checked to come from one request (see ``check_per_batch``)."""
    requests = scheme.requests
    if requests is None:
        yield from iterator
        return
    made = 0
    for item in iterator:
        made += 1
        if requests.taken != made:
            check_per_batch(requests, made)
        yield item
    check_per_batch(requests, made)


def shard(stream: Any, worker: int, workers: int) -> ShardedScheme:
    """Make ``stream`` (a copy) produce only the share ``worker``; the
    scheme that hands it out."""
    bottom, reason = _bottom(stream)
    if reason is not None:
        raise ValueError(f"cannot split this stream between producers: "
                         f"{reason}")
    bottom.iteration_scheme = scheme = ShardedScheme(
        bottom.iteration_scheme, worker, workers)
    return scheme
