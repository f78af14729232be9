"""Data streams: a dataset, its state and an iteration scheme, as epochs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

from shmfuel.iterator import DataIterator


def strip_batch_label(axis_labels: dict[str, Any] | None) -> dict[str, Any] | None:
    """A copy of ``axis_labels`` without the ``'batch'`` axis."""
    if axis_labels is None:
        return None
    return {source: (tuple(label for label in labels if label != "batch")
                     if labels is not None else None)
            for source, labels in axis_labels.items()}


def set_produces_examples(stream: Any, value: bool) -> None:
    """Set a stream's ``produces_examples``; its scheme, if any, decides."""
    if stream.iteration_scheme:
        raise ValueError("cannot set produces_examples when an iteration "
                         "scheme is given: the scheme decides")
    stream._produces_examples = value


class AbstractDataStream(ABC):
    """Base class of data streams.

    Parameters
    ----------
    iteration_scheme : IterationScheme, optional
        Makes the requests of each epoch.
    axis_labels : dict, optional
        Maps each source to a tuple of axis names.

    """

    def __init__(self, iteration_scheme: Any = None,
                 axis_labels: dict[str, Any] | None = None) -> None:
        if iteration_scheme is not None and (
                isinstance(iteration_scheme, type)
                or not callable(getattr(iteration_scheme, "get_request_iterator", None))):
            raise TypeError(
                f"iteration_scheme must be an iteration scheme object, such as "
                f"SequentialScheme(examples, batch_size), got {iteration_scheme!r}")
        self.iteration_scheme = iteration_scheme
        self.axis_labels = axis_labels

    @property
    def produces_examples(self) -> bool:
        if self.iteration_scheme:
            return bool(self.iteration_scheme.requests_examples)
        if not hasattr(self, "_produces_examples"):
            raise ValueError(
                f"cannot infer type of stream for {type(self).__name__} "
                "instance: pass produces_examples or an iteration scheme")
        return self._produces_examples

    @produces_examples.setter
    def produces_examples(self, value: bool) -> None:
        set_produces_examples(self, value)

    @property
    def sources(self) -> tuple[str, ...]:
        """Names of the data's sources; set it to override the default."""
        if hasattr(self, "_sources"):
            return self._sources
        return self._default_sources()

    @sources.setter
    def sources(self, value: Any) -> None:
        self._sources = tuple(value)

    def _default_sources(self) -> tuple[str, ...]:
        raise AttributeError(f"{type(self).__name__} has no sources: set "
                             "them, or derive them from a child")

    def get_data(self, request: Any = None) -> Any:
        """Answer one request of the current epoch."""
        raise NotImplementedError

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass

    def next_epoch(self) -> None:
        pass

    @abstractmethod
    def get_epoch_iterator(self, as_dict: bool = False) -> Any:
        """An iterator over one epoch (tuples, or dicts with ``as_dict``)."""
        request_iterator = (self.iteration_scheme.get_request_iterator()
                            if self.iteration_scheme else None)
        return DataIterator(self, request_iterator, as_dict=as_dict)

    def iterate_epochs(self, as_dict: bool = False) -> Iterator[Any]:
        """Endless generator of epoch iterators."""
        while True:
            yield self.get_epoch_iterator(as_dict=as_dict)


class DataStream(AbstractDataStream):
    """The stream of a dataset.

    Parameters
    ----------
    dataset : Dataset
        Answers the requests.
    iteration_scheme : IterationScheme, optional
        Without one the stream yields examples until the dataset raises
        ``StopIteration``.
    axis_labels : dict, optional
        Defaults to a copy of the dataset's. For example streams, ``'batch'``
        is removed from a copy (the caller's dict is left alone).

    Every ``get_epoch_iterator()`` but the first after construction or
    ``reset()`` moves the dataset to its next epoch.

    """

    def __init__(self, dataset: Any, **kwargs: Any) -> None:
        if dataset.axis_labels:
            kwargs.setdefault("axis_labels", dataset.axis_labels)
        super().__init__(**kwargs)
        self.dataset = dataset
        if self.axis_labels is not None:
            self.axis_labels = (strip_batch_label(self.axis_labels)
                                if self.produces_examples
                                else dict(self.axis_labels))
        self.data_state = self.dataset.open()
        self._fresh_state = True

    @property
    def produces_examples(self) -> bool:
        if self.iteration_scheme:
            return bool(self.iteration_scheme.requests_examples)
        return True

    @produces_examples.setter
    def produces_examples(self, value: bool) -> None:
        raise ValueError("a DataStream's produces_examples comes from its "
                         "iteration scheme and cannot be set")

    def _default_sources(self) -> tuple[str, ...]:
        return tuple(self.dataset.sources)

    def close(self) -> None:
        self.dataset.close(self.data_state)
        self.data_state = None

    def reset(self) -> None:
        self.data_state = self.dataset.reset(self.data_state)
        self._fresh_state = True

    def next_epoch(self) -> None:
        self.data_state = self.dataset.next_epoch(self.data_state)

    def get_epoch_iterator(self, as_dict: bool = False) -> Any:
        if not self._fresh_state:
            self.next_epoch()
        else:
            self._fresh_state = False
        return super().get_epoch_iterator(as_dict=as_dict)

    def get_data(self, request: Any = None) -> Any:
        return self.dataset.get_data(self.data_state, request)

    @classmethod
    def default_stream(cls, dataset: Any, **kwargs: Any) -> Any:
        """The stream of ``dataset`` with its default transformers applied."""
        return dataset.apply_default_transformers(cls(dataset, **kwargs))


def __getattr__(name: str) -> Any:
    # The bridge's client lives in shmfuel.bridge; it is looked up lazily so
    # that this module and the bridge can import each other's names.
    if name == "ServerDataStream":
        from shmfuel.bridge.client import ServerDataStream
        return ServerDataStream
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AbstractDataStream", "DataStream", "ServerDataStream"]  # noqa: F822
