"""Fuel's in-box prefetching transformers, kept for compatibility.

``MultiProcessing`` is now a thin wrapper over
:class:`~shmfuel.prefetch.Prefetcher`: batches travel through shared
memory instead of a pickling queue, errors and producer deaths reach the
consumer instead of hanging it, epochs are exact, and no process starts
before the first epoch is asked for (so the transformer pickles).
"""

from __future__ import annotations

import multiprocessing
from typing import Any

from shmfuel.iterator import DataIterator
from shmfuel.transformers._base import Transformer


class MultiProcessing(Transformer):
    """Prefetches the child stream's batches in another process.

    Parameters
    ----------
    data_stream : AbstractDataStream
        The stream to run in the background.
    max_store : int, optional
        How many batches may be prepared ahead (the Prefetcher's ``hwm``).

    The producer starts at the first ``get_epoch_iterator()``. Pickling
    keeps the stream and drops the producer; an unpickled copy starts a new
    one (from a fresh epoch) when iterated.

    """

    def __init__(self, data_stream: Any, max_store: int = 100,
                 **kwargs: Any) -> None:
        if max_store < 1:
            raise ValueError(f"max_store must be at least 1, got {max_store}")
        super().__init__(data_stream, **kwargs)
        self.max_store = max_store
        self._prefetcher: Any = None
        self._epoch: Any = None

    def get_epoch_iterator(self, as_dict: bool = False) -> Any:
        from shmfuel.prefetch import Prefetcher
        if self._prefetcher is None:
            self._prefetcher = Prefetcher(self.data_stream, hwm=self.max_store)
        self._epoch = self._prefetcher.get_epoch_iterator()
        return DataIterator(self, None, as_dict=as_dict)

    def get_data(self, request: Any = None) -> Any:
        if request is not None:
            raise ValueError(f"MultiProcessing takes no request, got "
                             f"{request!r}")
        if self._epoch is None:
            raise ValueError("call get_epoch_iterator() first")
        return next(self._epoch)

    def close(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None
            self._epoch = None
        super().close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_prefetcher"] = None
        state["_epoch"] = None
        return state


class BackgroundProcess:
    """Runs a stream's epochs forever, putting batches on a queue.

    Each epoch's batches are followed by the ``StopIteration`` class as an
    end marker. Kept for code that used Fuel's helper directly; new code
    should use :class:`~shmfuel.prefetch.Prefetcher`.
    """

    def __init__(self, data_stream: Any, max_batches: int) -> None:
        self.data_stream = data_stream
        self.batches: Any = multiprocessing.Queue(max_batches)
        self.run_background = True

    def main(self) -> None:
        while self.run_background:
            for batch in self.data_stream.get_epoch_iterator():
                self.batches.put(batch)
            self.batches.put(StopIteration)

    def get_next_data(self, timeout: float | None = None) -> Any:
        return self.batches.get(timeout=timeout)
