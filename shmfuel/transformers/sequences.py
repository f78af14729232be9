"""Transformers for sequence data: Window and NGrams."""

from __future__ import annotations

from typing import Any

from shmfuel.transformers._base import Transformer


class Window(Transformer):
    """Slides a window over each sequence of a one-source example stream.

    Parameters
    ----------
    offset : int
        Where the target starts relative to the source window: from the
        window's start if ``overlapping``, else from its end.
    source_window, target_window : int
        Lengths of the source and target slices.
    overlapping : bool
        See ``offset``.
    data_stream : AbstractDataStream
        An example stream with exactly one source.
    target_source : str, optional
        Name of the added target source.

    The window moves one step at a time; sequences too short for a window
    are skipped. With a negative offset the first window starts late enough
    that the target never begins before 0.

    """

    def __init__(self, offset: int, source_window: int, target_window: int,
                 overlapping: bool, data_stream: Any,
                 target_source: str = "targets", **kwargs: Any) -> None:
        if not data_stream.produces_examples:
            raise ValueError("the wrapped data stream must produce examples, "
                             "not batches of examples")
        if len(data_stream.sources) != 1:
            raise ValueError(f"{type(self).__name__} expects exactly one "
                             f"source, got {tuple(data_stream.sources)}")
        for name, value in (("source_window", source_window),
                            ("target_window", target_window)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        super().__init__(data_stream, produces_examples=True, **kwargs)
        self.sources = tuple(data_stream.sources) + (target_source,)
        self.offset = offset
        self.source_window = source_window
        self.target_window = target_window
        self.overlapping = overlapping
        self._sequence: Any = None
        self._index = 0

    def _target_start(self, index: int) -> int:
        shift = 0 if self.overlapping else self.source_window
        return index + shift + self.offset

    def _first_index(self) -> int:
        return max(0, -self._target_start(0))

    def _fits(self, index: int) -> bool:
        length = len(self._sequence)
        return (index + self.source_window <= length
                and self._target_start(index) + self.target_window <= length)

    def get_epoch_iterator(self, as_dict: bool = False) -> Any:
        self._sequence = None
        return super().get_epoch_iterator(as_dict=as_dict)

    def get_data(self, request: Any = None) -> Any:
        if request is not None:
            raise ValueError(f"{type(self).__name__} takes no request, "
                             f"got {request!r}")
        while self._sequence is None or not self._fits(self._index):
            self._sequence, = next(self.child_epoch_iterator)
            self._index = self._first_index()
        index = self._index
        target_start = self._target_start(index)
        self._index += 1
        return (self._sequence[index:index + self.source_window],
                self._sequence[target_start:target_start + self.target_window])


class NGrams(Window):
    """Each n-gram of a sequence, with the element that follows it.

    Parameters
    ----------
    ngram_order : int
        The length of the n-grams.
    data_stream : AbstractDataStream
        An example stream with exactly one source of sequences.
    target_source : str, optional
        Name of the added target source.

    """

    def __init__(self, ngram_order: int, data_stream: Any,
                 target_source: str = "targets", **kwargs: Any) -> None:
        super().__init__(0, ngram_order, 1, False, data_stream,
                         target_source=target_source, **kwargs)

    def get_data(self, request: Any = None) -> Any:
        source, target = super().get_data(request)
        return (source, target[0])


__all__ = ["NGrams", "Window"]
