"""Datasets answer requests with data; any reading position is in a state.

A dataset is stateless: ``open()`` makes the state, ``get_data(state,
request)`` answers a request with a tuple ordered like ``sources``.
"""

from __future__ import annotations

import collections.abc
import numbers
from abc import ABC, abstractmethod
from typing import Any

from shmfuel._iterators import Zip
from shmfuel.schemes import SequentialExampleScheme
from shmfuel.utils import Subset


class Dataset(ABC):
    """Base class of datasets.

    Parameters
    ----------
    sources : tuple of str, optional
        The sources to provide, a subset of ``provides_sources``.
    axis_labels : dict, optional
        Maps each source to a tuple of axis names.

    Raises
    ------
    ValueError
        If the class sets no ``provides_sources``, or ``sources`` is empty or
        names a source the dataset does not provide.

    """

    provides_sources: tuple[str, ...] | None = None
    default_transformers: tuple[Any, ...] = ()

    def __init__(self, sources: Any = None, axis_labels: Any = None) -> None:
        if not self.provides_sources:
            raise ValueError(f"{type(self).__name__} must set "
                             "provides_sources")
        if sources is not None:
            sources = tuple(sources)
            unknown = [s for s in sources if s not in self.provides_sources]
            if not sources or unknown:
                raise ValueError(
                    f"unable to provide requested sources {sources}: "
                    f"{type(self).__name__} provides {self.provides_sources}")
            self.sources = sources
        self.axis_labels = axis_labels

    @property
    def sources(self) -> tuple[str, ...]:
        if not hasattr(self, "_sources"):
            return tuple(self.provides_sources or ())
        return self._sources

    @sources.setter
    def sources(self, sources: Any) -> None:
        self._sources = tuple(sources)

    def apply_default_transformers(self, stream: Any) -> Any:
        """Wrap ``stream`` in the dataset's default transformers."""
        for (cls, args, kwargs) in self.default_transformers:
            stream = cls(stream, *args, **kwargs)
        return stream

    @property
    def example_iteration_scheme(self) -> Any:
        if not hasattr(self, "_example_iteration_scheme"):
            raise AttributeError(f"{type(self).__name__} has no example "
                                 "iteration scheme")
        return self._example_iteration_scheme

    @example_iteration_scheme.setter
    def example_iteration_scheme(self, value: Any) -> None:
        self._example_iteration_scheme = value

    def get_example_stream(self) -> Any:
        from shmfuel.streams import DataStream
        return DataStream(self, iteration_scheme=self.example_iteration_scheme)

    def open(self) -> Any:
        """Make the state of a new epoch (``None`` by default)."""
        return None

    def reset(self, state: Any) -> Any:
        self.close(state)
        return self.open()

    def next_epoch(self, state: Any) -> Any:
        return self.reset(state)

    def close(self, state: Any) -> None:
        pass

    @abstractmethod
    def get_data(self, state: Any = None, request: Any = None) -> tuple[Any, ...]:
        """Answer ``request``: a tuple ordered like ``self.sources``."""

    def filter_sources(self, data: tuple[Any, ...]) -> tuple[Any, ...]:
        """Keep the entries of a ``provides_sources`` tuple in ``sources``."""
        return tuple(d for d, s in zip(data, self.provides_sources or ())
                     if s in self.sources)


class IterableDataset(Dataset):
    """Sequential data without indexing.

    Parameters
    ----------
    iterables : dict or iterable
        A dict of source name to iterable, or one iterable (source
        ``'data'``).

    Raises
    ------
    ValueError
        If a value is not iterable, or the iterables have different lengths.

    """

    example_iteration_scheme = None

    def __init__(self, iterables: Any, **kwargs: Any) -> None:
        if isinstance(iterables, dict):
            self.provides_sources = tuple(iterables.keys())
        else:
            self.provides_sources = ("data",)
            iterables = {"data": iterables}
        super().__init__(**kwargs)
        for source, iterable in iterables.items():
            if not isinstance(iterable, collections.abc.Iterable):
                raise ValueError(f"source {source!r} is not iterable: "
                                 f"{iterable!r}")
        lengths = {len(it) for it in iterables.values()
                   if hasattr(it, "__len__")}
        if len(lengths) > 1:
            raise ValueError(f"sources have different lengths: {sorted(lengths)}")
        self._iterables = dict(iterables)

    @property
    def iterables(self) -> list[Any]:
        return [self._iterables[source] for source in self.sources]

    @property
    def num_examples(self) -> float:
        if all(hasattr(it, "__len__") for it in self.iterables):
            return len(self.iterables[0])
        return float("nan")

    def open(self) -> Zip:
        return Zip([iter(it) for it in self.iterables])

    def get_data(self, state: Any = None, request: Any = None) -> tuple[Any, ...]:
        if state is None:
            raise ValueError("IterableDataset.get_data needs the state "
                             "made by open()")
        if request is not None:
            raise ValueError("IterableDataset has no indexing: pass "
                             f"request=None, not {request!r}")
        return next(state)


class IndexableDataset(Dataset):
    """Random-access data.

    Parameters
    ----------
    indexables : dict or indexable
        A dict of source name to indexable (list, array, ...), or one
        indexable (source ``'data'``).
    start, stop : int, optional
        Keep only examples ``start`` to ``stop`` of every source. Unlike
        Fuel, this works with a dict and with a single indexable.

    Requests are an int, a slice or a list of indices. Arrays are
    fancy-indexed; lists answer list requests with lists.

    """

    def __init__(self, indexables: Any, start: int | None = None,
                 stop: int | None = None, **kwargs: Any) -> None:
        if isinstance(indexables, dict):
            self.provides_sources = tuple(indexables.keys())
        else:
            self.provides_sources = ("data",)
            indexables = {"data": indexables}
        super().__init__(**kwargs)
        for source, indexable in indexables.items():
            if not hasattr(indexable, "__getitem__") or not hasattr(
                    indexable, "__len__"):
                raise ValueError(f"source {source!r} is not indexable "
                                 f"(needs __getitem__ and __len__)")
        if start is not None or stop is not None:
            indexables = {s: v[start:stop] for s, v in indexables.items()}
        lengths = {len(v) for v in indexables.values()}
        if len(lengths) > 1:
            raise ValueError(
                f"sources have different lengths: {sorted(lengths)}")
        self._indexables = indexables
        self.start = start
        self.stop = stop
        self.subset = Subset(slice(0, self.num_examples), self.num_examples)
        self.example_iteration_scheme = SequentialExampleScheme(
            self.num_examples)

    @property
    def indexables(self) -> list[Any]:
        return [self._indexables[source] for source in self.sources]

    def __getattr__(self, attr: str) -> Any:
        indexables = self.__dict__.get("_indexables")
        if indexables is not None and attr in indexables:
            return indexables[attr]
        raise AttributeError(attr)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    @property
    def num_examples(self) -> int:
        return len(next(iter(self._indexables.values())))

    def get_data(self, state: Any = None, request: Any = None) -> tuple[Any, ...]:
        if state is not None:
            raise ValueError("IndexableDataset has no state: pass state=None")
        if request is None:
            raise ValueError("IndexableDataset needs a request: an int, a "
                             "slice or a list of indices")
        if isinstance(request, numbers.Integral):
            request = int(request)
        return tuple(self.subset.index_within_subset(indexable, request)
                     for indexable in self.indexables)
