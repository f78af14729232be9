"""The Transformer base classes and the rules they share.

A transformer is a stream that wraps a child stream. On each
``get_epoch_iterator`` it opens a new epoch of the child
(``child_epoch_iterator``) and transforms what it pulls from it.

Two rules differ from Fuel on purpose:

* axis labels are copied from the child unless the transformer is given
  its own or declares a change (Fuel's base class dropped them);
* ``produces_examples`` defaults to the child's when neither an argument
  nor a scheme sets it (Fuel raised ``ValueError`` when it was read).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy

from shmfuel.exceptions import AxisLabelsMismatchError
from shmfuel.streams import AbstractDataStream, set_produces_examples

log = logging.getLogger(__name__)


def call_user(function: Callable[..., Any], *args: Any) -> Any:
    """Call user code; a ``StopIteration`` it leaks becomes an error.

    ``StopIteration`` ends an epoch, so one raised by mistake inside a
    mapping or predicate would silently cut the epoch short.
    """
    try:
        return function(*args)
    except StopIteration as exc:
        raise RuntimeError(
            f"{getattr(function, '__name__', function)!s} raised "
            "StopIteration; user functions must not raise it (it would end "
            "the epoch early)") from exc


def as_batch(examples: list[Any]) -> Any:
    """Stack examples into an array; ragged examples give an object array.

    Fuel called ``numpy.asarray``, which raises on ragged data since numpy
    1.24; here each example is kept, unchanged, as one object element.
    """
    try:
        return numpy.asarray(examples)
    except ValueError:
        batch = numpy.empty(len(examples), dtype=object)
        for i, example in enumerate(examples):
            batch[i] = example
        return batch


class Transformer(AbstractDataStream):
    """A stream that transforms the data of a child stream.

    Parameters
    ----------
    data_stream : AbstractDataStream
        The child stream.
    produces_examples : bool, optional
        Whether this stream yields examples; defaults to the child's.
    iteration_scheme, axis_labels
        As for :class:`~shmfuel.streams.AbstractDataStream`. Without
        ``axis_labels`` the child's are copied.

    Subclasses implement ``transform_example`` and/or ``transform_batch``, or
    override ``get_data``.

    """

    def __init__(self, data_stream: Any, produces_examples: bool | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if produces_examples is not None:
            self.produces_examples = produces_examples
        self.data_stream = data_stream
        if self.axis_labels is None:
            child_labels = getattr(data_stream, "axis_labels", None)
            self.axis_labels = dict(child_labels) if child_labels else None

    def _produces_examples_or_child(self) -> bool:
        if self.iteration_scheme:
            return bool(self.iteration_scheme.requests_examples)
        if hasattr(self, "_produces_examples"):
            return self._produces_examples
        return bool(self.data_stream.produces_examples)

    produces_examples = property(_produces_examples_or_child,
                                 set_produces_examples)

    def _default_sources(self) -> tuple[str, ...]:
        return tuple(self.data_stream.sources)

    def close(self) -> None:
        self.data_stream.close()

    def reset(self) -> None:
        self.data_stream.reset()

    def next_epoch(self) -> None:
        self.data_stream.next_epoch()

    def get_epoch_iterator(self, as_dict: bool = False) -> Any:
        """Open a new epoch of the child; see the base class."""
        self.child_epoch_iterator = self.data_stream.get_epoch_iterator()
        return super().get_epoch_iterator(as_dict=as_dict)

    def get_data(self, request: Any = None) -> Any:
        if request is not None:
            raise ValueError(f"{type(self).__name__} takes no request, "
                             f"got {request!r}")
        data = next(self.child_epoch_iterator)
        if self.produces_examples != self.data_stream.produces_examples:
            types = ("examples", "batches")
            ours = types[not self.produces_examples]
            theirs = types[not self.data_stream.produces_examples]
            raise NotImplementedError(
                f"{type(self).__name__} produces {ours} while its child "
                f"produces {theirs}: override get_data to convert them")
        if self.produces_examples:
            return self.transform_example(data)
        return self.transform_batch(data)

    def transform_example(self, example: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not "
                                  "transform examples")

    def transform_batch(self, batch: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not "
                                  "transform batches")


class AgnosticTransformer(Transformer):
    """Applies ``transform_any`` to examples and batches alike."""

    def transform_any(self, data: Any) -> Any:
        raise NotImplementedError

    def transform_example(self, example: Any) -> Any:
        return self.transform_any(example)

    def transform_batch(self, batch: Any) -> Any:
        return self.transform_any(batch)


class SourcewiseTransformer(Transformer):
    """Transforms each source in ``which_sources`` independently.

    Parameters
    ----------
    data_stream : AbstractDataStream
        The child stream.
    produces_examples : bool
        Whether this stream yields examples.
    which_sources : tuple of str, optional
        The sources to transform (default: all). Unknown names raise
        ``ValueError``.

    Subclasses implement ``transform_source_example(x, name)`` and/or
    ``transform_source_batch(x, name)``.

    """

    def __init__(self, data_stream: Any, produces_examples: bool | None,
                 which_sources: Any = None, **kwargs: Any) -> None:
        if which_sources is None:
            which_sources = data_stream.sources
        elif isinstance(which_sources, str):
            which_sources = (which_sources,)
        unknown = [s for s in which_sources if s not in data_stream.sources]
        if unknown:
            raise ValueError(f"which_sources names {unknown}, which the "
                             f"stream does not have; it has "
                             f"{tuple(data_stream.sources)}")
        self.which_sources = tuple(which_sources)
        super().__init__(data_stream, produces_examples, **kwargs)

    def _apply_sourcewise_transformation(self, data: Any,
                                         method: Callable[[Any, str], Any]) -> tuple[Any, ...]:
        data = list(data)
        for i, source_name in enumerate(self.data_stream.sources):
            if source_name in self.which_sources:
                data[i] = method(data[i], source_name)
        return tuple(data)

    def transform_source_example(self, source_example: Any,
                                 source_name: str) -> Any:
        raise NotImplementedError

    def transform_source_batch(self, source_batch: Any,
                               source_name: str) -> Any:
        raise NotImplementedError

    def transform_example(self, example: Any) -> Any:
        return self._apply_sourcewise_transformation(
            example, self.transform_source_example)

    def transform_batch(self, batch: Any) -> Any:
        return self._apply_sourcewise_transformation(
            batch, self.transform_source_batch)


class AgnosticSourcewiseTransformer(AgnosticTransformer, SourcewiseTransformer):
    """Applies ``transform_any_source(x, name)`` to examples and batches."""

    def transform_any(self, data: Any) -> Any:
        return self._apply_sourcewise_transformation(
            data, self.transform_any_source)

    def transform_any_source(self, source_data: Any, source_name: str) -> Any:
        raise NotImplementedError


class ExpectsAxisLabels:
    """Mixin for transformers that check the axis labels of a source once."""

    def verify_axis_labels(self, expected: Any, actual: Any,
                           source_name: str) -> None:
        checked = self.__dict__.setdefault("_checked_axis_labels",
                                           defaultdict(bool))
        if checked[source_name]:
            return
        if actual is None:
            log.warning("%s cannot verify the axis labels of source %r "
                        "(expected %s, the stream has none)",
                        type(self).__name__, source_name, expected)
        elif expected != actual:
            raise AxisLabelsMismatchError(
                f"{type(self).__name__} expected axis labels {expected} for "
                f"source {source_name!r}, got {actual} instead")
        checked[source_name] = True
