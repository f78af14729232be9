"""Transformers that change which data flows: Mapping, Filter, Merge, ..."""

from __future__ import annotations

import logging
from collections import OrderedDict, abc
from collections.abc import Callable
from typing import Any

import numpy

from shmfuel.streams import AbstractDataStream
from shmfuel.transformers._base import AgnosticTransformer, Transformer, call_user

log = logging.getLogger(__name__)


class Mapping(Transformer):
    """Applies a function to each example or batch.

    Parameters
    ----------
    data_stream : AbstractDataStream
        The child stream.
    mapping : callable
        Gets the data tuple (or, with ``mapping_accepts=dict``, an ordered
        dict keyed by source) and returns a tuple (or dict keyed by the
        output sources).
    add_sources : tuple of str, optional
        If given, the mapping's output is appended to the input as these new
        sources.
    mapping_accepts : list or dict
        What the mapping receives.

    A ``StopIteration`` raised inside ``mapping`` becomes a ``RuntimeError``
    instead of silently ending the epoch.

    """

    def __init__(self, data_stream: Any, mapping: Callable[[Any], Any],
                 add_sources: Any = None, mapping_accepts: type = list,
                 **kwargs: Any) -> None:
        if mapping_accepts not in (list, dict):
            raise ValueError("mapping_accepts must be list or dict, got "
                             f"{mapping_accepts!r}")
        if not callable(mapping):
            raise TypeError(f"mapping must be callable, got {mapping!r}")
        super().__init__(data_stream, **kwargs)
        self.mapping = mapping
        self.add_sources = tuple(add_sources) if add_sources else None
        self.mapping_accepts = mapping_accepts

    @property  # type: ignore[misc]
    def sources(self) -> tuple[str, ...]:
        return tuple(self.data_stream.sources) + (self.add_sources or ())

    def get_data(self, request: Any = None) -> Any:
        if request is not None:
            raise ValueError(f"Mapping takes no request, got {request!r}")
        data = next(self.child_epoch_iterator)
        if self.mapping_accepts is dict:
            image = call_user(self.mapping, OrderedDict(
                zip(self.data_stream.sources, data)))
            if not isinstance(image, abc.Mapping):
                raise TypeError(
                    f"the mapping returned a {type(image).__name__}; with "
                    "mapping_accepts=dict it must return a dict keyed by source")
            wanted = self.add_sources or tuple(self.data_stream.sources)
            missing = [s for s in wanted if s not in image]
            if missing:
                raise KeyError(f"the mapping returned no value for sources "
                               f"{missing}")
            image = tuple(image[s] for s in wanted)
        else:
            image = call_user(self.mapping, data)
            if not isinstance(image, (tuple, list)):
                # tuple() would split an array into its rows, one per source
                raise TypeError(
                    f"the mapping returned a {type(image).__name__}; it must "
                    "return a tuple with one value per source (for one "
                    "source: return (value,))")
            image = tuple(image)
        if not self.add_sources:
            return image
        return tuple(data) + image


class SortMapping:
    """A mapping that sorts the examples of a batch by ``key(example)``.

    Sources that were arrays come back as arrays, others as lists.
    """

    def __init__(self, key: Callable[[Any], Any], reverse: bool = False) -> None:
        self.key = key
        self.reverse = reverse

    def __call__(self, batch: Any) -> tuple[Any, ...]:
        examples = sorted(zip(*batch), key=self.key, reverse=self.reverse)
        columns = list(zip(*examples)) if examples else [() for _ in batch]
        return tuple(numpy.asarray(column) if isinstance(original,
                                                         numpy.ndarray)
                     else list(column)
                     for column, original in zip(columns, batch))


class Filter(Transformer):
    """Keeps the examples or batches for which ``predicate(data)`` is true.

    Unlike Fuel's, it honours ``as_dict`` and its epoch iterator pickles
    (if the predicate does).
    """

    def __init__(self, data_stream: Any, predicate: Callable[[Any], Any],
                 **kwargs: Any) -> None:
        if not callable(predicate):
            raise TypeError(f"predicate must be callable, got {predicate!r}")
        super().__init__(data_stream, **kwargs)
        self.predicate = predicate

    def get_data(self, request: Any = None) -> Any:
        if request is not None:
            raise ValueError(f"Filter takes no request, got {request!r}")
        while True:
            data = next(self.child_epoch_iterator)
            if call_user(self.predicate, data):
                return data


class Merge(AbstractDataStream):
    """Zips several streams: each item joins one item of each child.

    Parameters
    ----------
    data_streams : list of AbstractDataStream
        The children; they must all produce examples or all batches.
    sources : tuple of str
        Names of the merged sources, as many as the children have together.
    axis_labels : dict, optional
        Labels of the merged sources.
    strict : bool, optional
        If True (the default), children whose epochs have different lengths
        raise ``ValueError`` (Fuel silently stopped at the shortest); pass
        False to stop at the shortest.

    """

    def __init__(self, data_streams: Any, sources: Any,
                 axis_labels: Any = None, strict: bool = True) -> None:
        super().__init__(axis_labels=axis_labels)
        data_streams = list(data_streams)
        if not data_streams:
            raise ValueError("Merge needs at least one stream")
        kinds = {ds.produces_examples for ds in data_streams}
        if len(kinds) != 1:
            raise ValueError("all data streams must produce the same type of "
                             "output (batches or examples)")
        total = sum(len(ds.sources) for ds in data_streams)
        if total != len(sources):
            raise ValueError(f"wrong number of sources given: the streams "
                             f"have {total} sources, got {len(sources)} names")
        self.data_streams = data_streams
        self.produces_examples = kinds.pop()
        self.sources = tuple(sources)
        self.strict = strict

    def close(self) -> None:
        for data_stream in self.data_streams:
            data_stream.close()

    def reset(self) -> None:
        for data_stream in self.data_streams:
            data_stream.reset()

    def next_epoch(self) -> None:
        for data_stream in self.data_streams:
            data_stream.next_epoch()

    def get_epoch_iterator(self, as_dict: bool = False) -> Any:
        self.child_epoch_iterators = [ds.get_epoch_iterator()
                                      for ds in self.data_streams]
        return super().get_epoch_iterator(as_dict=as_dict)

    def get_data(self, request: Any = None) -> Any:
        if request is not None:
            raise ValueError(f"Merge takes no request, got {request!r}")
        result: list[Any] = []
        ended = []
        for i, iterator in enumerate(self.child_epoch_iterators):
            try:
                result.extend(next(iterator))
            except StopIteration:
                if not self.strict:
                    raise
                ended.append(i)
        if not ended:
            return tuple(result)
        if len(ended) == len(self.child_epoch_iterators):
            raise StopIteration
        raise ValueError(f"Merge: streams {ended} ended before the others; "
                         "their epochs have different lengths (pass "
                         "strict=False to stop at the shortest)")


class Rename(AgnosticTransformer):
    """Renames sources.

    Parameters
    ----------
    data_stream : AbstractDataStream
        The child stream.
    names : dict
        Maps old source names to new ones.
    on_non_existent : 'raise', 'warn' or 'ignore'
        What to do about old names the stream does not have.

    Raises
    ------
    KeyError
        For an unknown old name (with ``'raise'``) or if two sources would
        end up with the same name.

    """

    def __init__(self, data_stream: Any, names: dict[str, str],
                 on_non_existent: str = "raise", **kwargs: Any) -> None:
        if on_non_existent not in ("raise", "warn", "ignore"):
            raise ValueError("on_non_existent must be 'raise', 'warn' or "
                             f"'ignore', got {on_non_existent!r}")
        super().__init__(data_stream, **kwargs)
        for old in names:
            if old not in data_stream.sources:
                message = (f"Rename: {old!r} is not a source of the stream "
                           f"{tuple(data_stream.sources)}")
                if on_non_existent == "raise":
                    raise KeyError(message)
                (log.warning if on_non_existent == "warn"
                 else log.debug)(message)
        new_sources = [names.get(s, s) for s in data_stream.sources]
        duplicates = sorted({s for s in new_sources
                             if new_sources.count(s) > 1})
        if duplicates:
            raise KeyError(f"Rename would give several sources the name(s) "
                           f"{duplicates}")
        self.sources = tuple(new_sources)
        if self.axis_labels:
            self.axis_labels = {names.get(s, s): labels
                                for s, labels in self.axis_labels.items()}

    def transform_any(self, data: Any) -> Any:
        return data


class FilterSources(AgnosticTransformer):
    """Keeps some sources, in the child's order.

    Raises
    ------
    ValueError
        If a source is not in the child stream.

    """

    def __init__(self, data_stream: Any, sources: Any, **kwargs: Any) -> None:
        if isinstance(sources, str):
            sources = (sources,)
        unknown = [s for s in sources if s not in data_stream.sources]
        if unknown:
            raise ValueError(f"sources {unknown} are not in the stream's "
                             f"sources {tuple(data_stream.sources)}")
        super().__init__(data_stream, **kwargs)
        self.sources = tuple(s for s in data_stream.sources if s in sources)
        if self.axis_labels:
            self.axis_labels = {s: labels for s, labels
                                in self.axis_labels.items()
                                if s in self.sources}

    def transform_any(self, data: Any) -> tuple[Any, ...]:
        return tuple(d for d, s in zip(data, self.data_stream.sources)
                     if s in self.sources)
