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
    """Items ``start, start+step, ...`` of an iterator; picklable."""

    def __init__(self, iterator: Iterator[Any], start: int, step: int) -> None:
        self.iterator = iterator
        self.start = start
        self.step = step
        self.skip = start

    def __iter__(self) -> Every:
        return self

    def __next__(self) -> Any:
        for _ in range(self.skip):
            next(self.iterator)
        self.skip = self.step - 1
        return next(self.iterator)


class ShardedScheme:
    """The share ``worker`` of ``workers`` of another scheme's requests."""

    def __init__(self, scheme: Any, worker: int, workers: int) -> None:
        self.scheme = scheme
        self.worker = worker
        self.workers = workers
        self.requests_examples = scheme.requests_examples

    def get_request_iterator(self) -> Every:
        return Every(self.scheme.get_request_iterator(), self.worker,
                     self.workers)


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


def shard(stream: Any, worker: int, workers: int) -> None:
    """Make ``stream`` (a copy) produce only the share ``worker``."""
    bottom, reason = _bottom(stream)
    if reason is not None:
        raise ValueError(f"cannot split this stream between producers: "
                         f"{reason}")
    bottom.iteration_scheme = ShardedScheme(bottom.iteration_scheme, worker,
                                            workers)
