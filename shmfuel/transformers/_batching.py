"""Transformers that make, remake or unmake batches."""

from __future__ import annotations

import numbers
from typing import Any

import numpy

from shmfuel.config_parser import config
from shmfuel.schemes import BatchSizeScheme
from shmfuel.transformers._base import Transformer, as_batch


def _batch_size(request: Any, name: str) -> int:
    if request is None:
        raise ValueError(f"{name} needs a request (a batch size or a list of "
                         "indices); give it an iteration scheme")
    if isinstance(request, numbers.Integral):
        return int(request)
    return len(request)


class Batch(Transformer):
    """Groups the examples of a child stream into batches.

    Parameters
    ----------
    data_stream : AbstractDataStream
        Must produce examples.
    iteration_scheme : IterationScheme
        Must request batches (sizes, or lists whose length is the size).
    strictness : 0, 1 or 2
        What to do when the child runs out mid-batch: 0 returns the short
        batch, 1 drops it, 2 raises ``ValueError``.

    Each source is stacked with ``numpy.asarray``; ragged examples (which
    numpy 2 refuses to stack) give an object array holding each example
    unchanged.

    """

    def __init__(self, data_stream: Any, iteration_scheme: Any,
                 strictness: int = 0, **kwargs: Any) -> None:
        if not data_stream.produces_examples:
            raise ValueError("the wrapped data stream must produce examples, "
                             "not batches of examples")
        if iteration_scheme is None or iteration_scheme.requests_examples:
            raise ValueError("the iteration scheme must request batches, not "
                             "individual examples")
        if strictness not in (0, 1, 2):
            raise ValueError(f"strictness must be 0, 1 or 2, got {strictness!r}")
        super().__init__(data_stream, iteration_scheme=iteration_scheme,
                         **kwargs)
        self.strictness = strictness
        if self.axis_labels:
            self.axis_labels = {s: (("batch",) + tuple(labels)
                                    if labels is not None else None)
                                for s, labels in self.axis_labels.items()}

    def get_data(self, request: Any = None) -> Any:
        size = _batch_size(request, "Batch")
        data: list[list[Any]] = [[] for _ in self.sources]
        for _ in range(size):
            try:
                example = next(self.child_epoch_iterator)
            except StopIteration:
                if not data[0] or self.strictness == 1:
                    raise
                if self.strictness == 2:
                    raise ValueError(
                        f"the stream ran out after {len(data[0])} of the "
                        f"{size} examples of a batch (strictness=2)") from None
                break
            for source_data, value in zip(data, example):
                source_data.append(value)
        if not data[0]:
            raise StopIteration
        return tuple(as_batch(source_data) for source_data in data)


class Cache(Transformer):
    """Re-batches a batch stream to the sizes a ``BatchSizeScheme`` asks for.

    Parameters
    ----------
    data_stream : AbstractDataStream
        A stream of batches.
    iteration_scheme : BatchSizeScheme
        The sizes of the output batches.

    Unlike Fuel, it pulls as many child batches as a request needs (so
    batches are short only at the end of the epoch), and returns what is
    cached when the child runs out. The cache is emptied at each new epoch.

    """

    def __init__(self, data_stream: Any, iteration_scheme: Any,
                 **kwargs: Any) -> None:
        if not isinstance(iteration_scheme, BatchSizeScheme):
            raise ValueError("Cache needs a BatchSizeScheme (e.g. "
                             "ConstantScheme), got "
                             f"{type(iteration_scheme).__name__}")
        if data_stream.produces_examples:
            raise ValueError("the wrapped data stream must produce batches, "
                             "not examples; use Batch for examples")
        super().__init__(data_stream, iteration_scheme=iteration_scheme,
                         **kwargs)
        self.cache: list[list[Any]] = [[] for _ in self.sources]

    def get_epoch_iterator(self, as_dict: bool = False) -> Any:
        self.cache = [[] for _ in self.sources]
        return super().get_epoch_iterator(as_dict=as_dict)

    def get_data(self, request: Any = None) -> Any:
        size = _batch_size(request, "Cache")
        while len(self.cache[0]) < size:
            try:
                batch = next(self.child_epoch_iterator)
            except StopIteration:
                if not self.cache[0]:
                    raise
                break
            for cache, source_batch in zip(self.cache, batch):
                cache.extend(source_batch)
        data = []
        for i, cache in enumerate(self.cache):
            data.append(as_batch(cache[:size]))
            self.cache[i] = cache[size:]
        return tuple(data)


class Unpack(Transformer):
    """Turns a stream of batches into a stream of examples."""

    def __init__(self, data_stream: Any, **kwargs: Any) -> None:
        if data_stream.produces_examples:
            raise ValueError("the wrapped data stream must produce batches "
                             "of examples, not examples")
        super().__init__(data_stream, produces_examples=True, **kwargs)
        self._batch: Any = None
        self._position = 0
        if self.axis_labels:
            self.axis_labels = {s: (tuple(labels)[1:]
                                    if labels is not None else None)
                                for s, labels in self.axis_labels.items()}

    def get_epoch_iterator(self, as_dict: bool = False) -> Any:
        self._batch = None
        return super().get_epoch_iterator(as_dict=as_dict)

    def get_data(self, request: Any = None) -> Any:
        if request is not None:
            raise ValueError(f"Unpack takes no request, got {request!r}")
        while self._batch is None or self._position >= len(self._batch[0]):
            self._batch = next(self.child_epoch_iterator)
            self._position = 0
        position = self._position
        self._position += 1
        return tuple(source[position] for source in self._batch)


class Padding(Transformer):
    """Pads variable-length sequences and adds masks.

    Parameters
    ----------
    data_stream : AbstractDataStream
        A stream of batches whose examples are sequences.
    mask_sources : tuple of str, optional
        The sources to pad (default: all).
    mask_dtype : dtype, optional
        Of the masks; defaults to ``config.floatX``.

    Each padded source ``s`` is followed by ``s_mask``, of shape
    ``(batch, longest)``, with 1 on real positions. Works on ragged
    batches (object arrays or lists), also on numpy 2.

    """

    def __init__(self, data_stream: Any, mask_sources: Any = None,
                 mask_dtype: Any = None, **kwargs: Any) -> None:
        if data_stream.produces_examples:
            raise ValueError("the wrapped data stream must produce batches "
                             "of examples, not examples")
        super().__init__(data_stream, produces_examples=False, **kwargs)
        if mask_sources is None:
            mask_sources = data_stream.sources
        unknown = [s for s in mask_sources if s not in data_stream.sources]
        if unknown:
            raise ValueError(f"mask_sources {unknown} are not in the stream's "
                             f"sources {tuple(data_stream.sources)}")
        self.mask_sources = tuple(mask_sources)
        self.mask_dtype = mask_dtype

    @property  # type: ignore[misc]
    def sources(self) -> tuple[str, ...]:
        sources: list[str] = []
        for source in self.data_stream.sources:
            sources.append(source)
            if source in self.mask_sources:
                sources.append(source + "_mask")
        return tuple(sources)

    def transform_batch(self, batch: Any) -> tuple[Any, ...]:
        mask_dtype = (self.mask_dtype if self.mask_dtype is not None
                      else config.floatX)
        result: list[Any] = []
        for source, source_batch in zip(self.data_stream.sources, batch):
            result.append(source_batch)
            if source not in self.mask_sources:
                continue
            samples = [numpy.asarray(sample) for sample in source_batch]
            if not samples:
                raise ValueError(f"Padding: source {source!r} has an empty "
                                 "batch")
            if any(sample.ndim == 0 for sample in samples):
                raise ValueError(f"Padding: source {source!r} holds scalars; "
                                 "it needs sequences (arrays with a length "
                                 "axis)")
            lengths = [len(sample) for sample in samples]
            rest_shape = samples[0].shape[1:]
            if any(sample.shape[1:] != rest_shape for sample in samples):
                raise ValueError(f"Padding: source {source!r} has examples "
                                 "whose dimensions other than the first "
                                 "differ")
            padded = numpy.zeros((len(samples), max(lengths)) + rest_shape,
                                 dtype=samples[0].dtype)
            mask = numpy.zeros((len(samples), max(lengths)), dtype=mask_dtype)
            for i, (sample, length) in enumerate(zip(samples, lengths)):
                padded[i, :length] = sample
                mask[i, :length] = 1
            result[-1] = padded
            result.append(mask)
        return tuple(result)
