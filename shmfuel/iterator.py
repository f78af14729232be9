"""DataIterator: one epoch of a stream."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


class DataIterator:
    """Pulls one epoch of data out of a stream.

    Parameters
    ----------
    data_stream : AbstractDataStream
        The stream whose ``get_data`` answers each request.
    request_iterator : iterator, optional
        The epoch's requests; without one, ``get_data()`` is called with no
        request until it raises ``StopIteration``.
    as_dict : bool, optional
        Return dicts keyed by source instead of tuples.

    It holds nothing but the stream and the request iterator, so it pickles
    whenever those do, and resumes at the exact next batch.

    """

    def __init__(self, data_stream: Any,
                 request_iterator: Iterator[Any] | None = None,
                 as_dict: bool = False) -> None:
        self.data_stream = data_stream
        self.request_iterator = request_iterator
        self.as_dict = as_dict

    def __iter__(self) -> DataIterator:
        return self

    def __next__(self) -> Any:
        if self.request_iterator is not None:
            data = self.data_stream.get_data(next(self.request_iterator))
        else:
            data = self.data_stream.get_data()
        if self.as_dict:
            sources = self.data_stream.sources
            if len(sources) != len(data):
                raise ValueError(
                    f"{type(self.data_stream).__name__} returned "
                    f"{len(data)} items but has {len(sources)} sources "
                    f"{tuple(sources)}")
            return dict(zip(sources, data))
        return data
