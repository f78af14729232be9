"""NpyDataset: ``.npy`` files, memory-mapped, indexable by example."""

from __future__ import annotations

import os
from typing import Any

import numpy

from shmfuel.datasets.base import IndexableDataset


class NpyDataset(IndexableDataset):
    """Sources stored as ``.npy`` files, read through memory maps.

    Parameters
    ----------
    paths : dict
        Maps each source to the path of a ``.npy`` file whose first axis is
        the examples.
    start, stop : int, optional
        Keep only examples ``start`` to ``stop``.

    Nothing is read until requested, and then only the requested examples:
    data that does not fit in memory works, and several producer processes
    share the operating system's page cache instead of each holding a copy.
    It pickles by path; the files are mapped again where it is unpickled.
    Requests are answered with plain ndarrays, as for IndexableDataset.

    Raises
    ------
    FileNotFoundError
        If a file is missing.
    ValueError
        If a file is not a ``.npy`` array with a first axis, or the sources
        have different lengths.

    """

    def __init__(self, paths: dict[str, Any], start: int | None = None,
                 stop: int | None = None, **kwargs: Any) -> None:
        if not isinstance(paths, dict) or not paths:
            raise TypeError("paths must be a non-empty dict of source -> "
                            f".npy path, got {paths!r}")
        self.paths = {source: os.fspath(path) for source, path in paths.items()}
        super().__init__(self._map(), start=start, stop=stop, **kwargs)

    def _map(self) -> dict[str, numpy.ndarray]:
        arrays = {}
        for source, path in self.paths.items():
            if not os.path.isfile(path):
                raise FileNotFoundError(f"source {source!r}: no file at {path}")
            try:
                array = numpy.load(path, mmap_mode="r", allow_pickle=False)
            except ValueError as exc:
                raise ValueError(f"source {source!r}: {path} is not a plain "
                                 f".npy array ({exc})") from None
            if array.ndim == 0:
                raise ValueError(f"source {source!r}: {path} holds a scalar, "
                                 "not examples")
            arrays[source] = array
        return arrays

    def get_data(self, state: Any = None, request: Any = None) -> tuple[Any, ...]:
        # Plain arrays (not memmap views), so they travel as raw bytes.
        return tuple(numpy.asarray(d) if isinstance(d, numpy.memmap) else d
                     for d in super().get_data(state, request))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_indexables"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        arrays = self._map()
        if self.start is not None or self.stop is not None:
            arrays = {s: a[self.start:self.stop] for s, a in arrays.items()}
        self._indexables = arrays


__all__ = ["NpyDataset"]
