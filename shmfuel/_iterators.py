"""Small picklable iterators.

An epoch iterator must pickle mid-epoch and resume at the exact next batch,
so everything it holds is built from these plain classes (no generators, no
reliance on pickling ``itertools`` objects, which Python 3.14 drops).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy


class Chunks:
    """Yield consecutive lists of ``size`` items of ``items`` (a numpy
    array's as Python numbers)."""

    def __init__(self, items: Sequence[Any], size: int) -> None:
        self.items = items
        self.size = size
        self.position = 0

    def __iter__(self) -> Chunks:
        return self

    def __next__(self) -> list[Any]:
        if self.position >= len(self.items):
            raise StopIteration
        chunk = self.items[self.position:self.position + self.size]
        self.position += self.size
        return chunk.tolist() if isinstance(chunk, numpy.ndarray) else list(chunk)


class Items:
    """Yield the items of ``items`` one by one (a numpy array's as Python
    numbers)."""

    def __init__(self, items: Sequence[Any]) -> None:
        self.items = items
        self.position = 0

    def __iter__(self) -> Items:
        return self

    def __next__(self) -> Any:
        if self.position >= len(self.items):
            raise StopIteration
        item = self.items[self.position]
        self.position += 1
        return item.item() if isinstance(item, numpy.generic) else item


class Repeat:
    """Yield ``value`` ``times`` times, or forever if ``times`` is None."""

    def __init__(self, value: Any, times: int | None = None) -> None:
        self.value = value
        self.remaining = times

    def __iter__(self) -> Repeat:
        return self

    def __next__(self) -> Any:
        if self.remaining is not None:
            if self.remaining <= 0:
                raise StopIteration
            self.remaining -= 1
        return self.value


class Chain:
    """Exhaust each iterator in turn."""

    def __init__(self, iterators: Sequence[Iterator[Any]]) -> None:
        self.iterators = list(iterators)

    def __iter__(self) -> Chain:
        return self

    def __next__(self) -> Any:
        while self.iterators:
            try:
                return next(self.iterators[0])
            except StopIteration:
                self.iterators.pop(0)
        raise StopIteration


class Zip:
    """Yield tuples of one item from each iterator; stop at the first end."""

    def __init__(self, iterators: Sequence[Iterator[Any]]) -> None:
        self.iterators = list(iterators)

    def __iter__(self) -> Zip:
        return self

    def __next__(self) -> tuple[Any, ...]:
        return tuple([next(it) for it in self.iterators])
