"""Per-source numeric transformers: Flatten, ScaleAndShift, Cast, ForceFloatX."""

from __future__ import annotations

from typing import Any

import numpy

from shmfuel.config_parser import config
from shmfuel.transformers._base import AgnosticSourcewiseTransformer, SourcewiseTransformer


class Flatten(SourcewiseTransformer):
    """Flattens examples, or each example of a batch.

    Axis labels of the flattened sources become ``('feature',)`` for
    examples and ``(first_label, 'feature')`` for batches.
    """

    def __init__(self, data_stream: Any, **kwargs: Any) -> None:
        kwargs.setdefault("produces_examples", data_stream.produces_examples)
        super().__init__(data_stream, **kwargs)
        if self.axis_labels:
            labels = dict(self.axis_labels)
            for source in self.which_sources:
                old = labels.get(source)
                if old is None:
                    continue
                labels[source] = (("feature",) if self.produces_examples
                                  else (old[0], "feature"))
            self.axis_labels = labels

    def transform_source_example(self, source_example: Any,
                                 source_name: str) -> Any:
        return numpy.asarray(source_example).flatten()

    def transform_source_batch(self, source_batch: Any,
                               source_name: str) -> Any:
        return numpy.asarray(source_batch).reshape((len(source_batch), -1))


class ScaleAndShift(AgnosticSourcewiseTransformer):
    """``asarray(x) * scale + shift`` on each selected source."""

    def __init__(self, data_stream: Any, scale: float, shift: float,
                 **kwargs: Any) -> None:
        self.scale = scale
        self.shift = shift
        kwargs.setdefault("produces_examples", data_stream.produces_examples)
        super().__init__(data_stream, **kwargs)

    def transform_any_source(self, source_data: Any, source_name: str) -> Any:
        return numpy.asarray(source_data) * self.scale + self.shift


class Cast(AgnosticSourcewiseTransformer):
    """``asarray(x, dtype)`` on each selected source.

    ``'floatX'`` is resolved from ``config.floatX`` at construction.
    """

    def __init__(self, data_stream: Any, dtype: Any, **kwargs: Any) -> None:
        if dtype == "floatX":
            dtype = config.floatX
        self.dtype = numpy.dtype(dtype)
        kwargs.setdefault("produces_examples", data_stream.produces_examples)
        super().__init__(data_stream, **kwargs)

    def transform_any_source(self, source_data: Any, source_name: str) -> Any:
        return numpy.asarray(source_data, dtype=self.dtype)


class ForceFloatX(AgnosticSourcewiseTransformer):
    """Casts float arrays to ``config.floatX`` (read at each call).

    Integer arrays and non-arrays pass through unchanged.
    """

    def __init__(self, data_stream: Any, **kwargs: Any) -> None:
        kwargs.setdefault("produces_examples", data_stream.produces_examples)
        super().__init__(data_stream, **kwargs)

    def transform_any_source(self, source_data: Any, source_name: str) -> Any:
        if (isinstance(source_data, numpy.ndarray)
                and source_data.dtype.kind == "f"
                and source_data.dtype != numpy.dtype(config.floatX)):
            return source_data.astype(config.floatX)
        return source_data
