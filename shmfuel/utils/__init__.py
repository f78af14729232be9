"""Helpers that Fuel code imports from ``fuel.utils``.

:class:`Subset` does the request arithmetic of indexable datasets,
:func:`do_not_pickle_attributes` keeps heavy attributes out of pickles, and
:func:`find_in_data_path` looks files up in ``config.data_path``.
"""

from __future__ import annotations

import collections.abc
import inspect
import numbers
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy

from shmfuel.config_parser import config


def _is_array_like(indexable: Any) -> bool:
    # numpy arrays, memmaps and h5py datasets support fancy indexing; lists
    # and other sequences are indexed one item at a time.
    return isinstance(indexable, numpy.ndarray) or (
        type(indexable).__module__.startswith("h5py"))


def iterable_fancy_indexing(iterable: Any, request: Sequence[int]) -> Any:
    """Index ``iterable`` with a list of indices.

    Arrays are fancy-indexed; anything else is indexed item by item and the
    result is a list.
    """
    if _is_array_like(iterable):
        return iterable[request]
    return [iterable[r] for r in request]


class Subset:
    """A subset of the examples ``0 .. original_num_examples - 1``.

    Parameters
    ----------
    list_or_slice : list of int or slice
        The examples. A list is de-duplicated and sorted; a contiguous list
        becomes a slice.
    original_num_examples : int
        Number of examples of the whole indexable.

    Raises
    ------
    ValueError
        If an index or slice bound is negative or out of range, or a slice
        has a step other than 1 or starts after it stops.

    """

    def __init__(self, list_or_slice: list[int] | slice,
                 original_num_examples: int) -> None:
        self._subset_sanity_check(list_or_slice, original_num_examples)
        if isinstance(list_or_slice, list):
            list_or_slice = sorted(set(list_or_slice))
            if list_or_slice and (list_or_slice[-1] - list_or_slice[0]
                                  == len(list_or_slice) - 1):
                list_or_slice = slice(list_or_slice[0], list_or_slice[-1] + 1)
        self.list_or_slice: Any = list_or_slice
        self.original_num_examples = original_num_examples

    @staticmethod
    def slice_to_numerical_args(slice_: slice,
                                num_examples: int) -> tuple[int, int, int]:
        start = 0 if slice_.start is None else slice_.start
        stop = num_examples if slice_.stop is None else slice_.stop
        step = 1 if slice_.step is None else slice_.step
        return start, stop, step

    @classmethod
    def _subset_sanity_check(cls, list_or_slice: Any,
                             num_examples: int) -> None:
        if isinstance(list_or_slice, slice):
            start, stop, step = cls.slice_to_numerical_args(
                list_or_slice, num_examples)
            if start < 0 or stop < 0:
                raise ValueError("subset slice bounds must not be negative, "
                                 f"got {list_or_slice}")
            if step != 1:
                raise ValueError(
                    f"subset slices must have step 1, got {list_or_slice}")
            if stop > num_examples:
                raise ValueError(
                    f"subset slice {list_or_slice} stops after the last of "
                    f"the {num_examples} examples")
            if start >= num_examples and num_examples > 0:
                raise ValueError(
                    f"subset slice {list_or_slice} starts after the last of "
                    f"the {num_examples} examples")
            if start > stop:
                raise ValueError(
                    f"subset slice {list_or_slice} starts after it stops")
        elif isinstance(list_or_slice, list):
            if any(not isinstance(i, numbers.Integral) for i in list_or_slice):
                raise TypeError("subset lists must hold integers")
            if list_or_slice and min(list_or_slice) < 0:
                raise ValueError("subset indices must not be negative")
            if list_or_slice and max(list_or_slice) >= num_examples:
                raise ValueError(
                    f"subset index {max(list_or_slice)} is out of range for "
                    f"{num_examples} examples")
        else:
            raise TypeError("a subset is a list of indices or a slice, got "
                            f"{type(list_or_slice).__name__}")

    @classmethod
    def subset_of(cls, subset: Subset,
                  list_or_slice: list[int] | slice) -> Subset:
        """The subset ``list_or_slice`` of ``subset``, in original indices."""
        return cls(subset.get_list_representation_of(list_or_slice),
                   subset.original_num_examples)

    @classmethod
    def empty_subset(cls, num_examples: int) -> Subset:
        return cls([], num_examples)

    def get_list_representation_of(self, request: Any) -> Any:
        translated = self[request]
        if isinstance(translated, slice):
            return list(range(*self.slice_to_numerical_args(
                translated, self.original_num_examples)))
        return translated

    def __add__(self, other: Subset) -> Subset:
        if self.original_num_examples != other.original_num_examples:
            raise ValueError("cannot add subsets of different original sizes "
                             f"({self.original_num_examples} and "
                             f"{other.original_num_examples})")
        if (self.is_list or other.is_list or not self.list_or_slice.stop
                or not other.list_or_slice.stop):
            return Subset(self.get_list_representation()
                          + other.get_list_representation(),
                          self.original_num_examples)
        a, b = sorted([self.list_or_slice, other.list_or_slice],
                      key=lambda s: s.start or 0)
        if (b.start or 0) <= a.stop:
            return Subset(slice(a.start, max(a.stop, b.stop)),
                          self.original_num_examples)
        return Subset(self.get_list_representation()
                      + other.get_list_representation(),
                      self.original_num_examples)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Subset)
                and self.original_num_examples == other.original_num_examples
                and self.get_list_representation()
                == other.get_list_representation())

    def __repr__(self) -> str:
        return f"Subset({self.list_or_slice!r}, {self.original_num_examples})"

    @property
    def is_list(self) -> bool:
        return isinstance(self.list_or_slice, list)

    @property
    def num_examples(self) -> int:
        if self.is_list:
            return len(self.list_or_slice)
        start, stop, _ = self.slice_to_numerical_args(
            self.list_or_slice, self.original_num_examples)
        return stop - start

    @property
    def is_empty(self) -> bool:
        return self.num_examples == 0

    def get_list_representation(self) -> list[int]:
        if self.is_list:
            return list(self.list_or_slice)
        return list(range(*self.slice_to_numerical_args(
            self.list_or_slice, self.original_num_examples)))

    def _check_request(self, request: Any) -> None:
        size = self.num_examples
        if isinstance(request, numbers.Integral):
            request = [request]
        if isinstance(request, slice):
            start, stop, step = self.slice_to_numerical_args(request, size)
            if start < 0 or stop < 0:
                raise ValueError(f"request {request} has a negative bound")
            if stop > size:
                raise ValueError(f"request {request} stops after the last of "
                                 f"the {size} examples")
            if start >= size:
                raise ValueError(f"request {request} starts after the last "
                                 f"of the {size} examples")
            if start >= stop:
                raise ValueError(f"request {request} is empty")
            if step < 1:
                raise ValueError(f"request {request} needs a positive step")
            return
        if not isinstance(request, (list, tuple, numpy.ndarray)):
            raise TypeError("a request is an int, a slice or a list of ints, "
                            f"got {type(request).__name__}")
        if len(request) == 0:
            raise ValueError("empty list requests are not allowed")
        if min(request) < 0:
            raise ValueError(f"request {list(request)} has a negative index")
        if max(request) >= size:
            raise ValueError(f"index {max(request)} is out of range: the "
                             f"subset has {size} examples")

    def __getitem__(self, key: Any) -> Any:
        self._check_request(key)
        if self.is_list:
            items = self.list_or_slice
            if isinstance(key, numbers.Integral):
                return items[key]
            if isinstance(key, slice):
                return items[key]
            return [items[k] for k in key]
        start = self.list_or_slice.start or 0
        if isinstance(key, numbers.Integral):
            return start + key
        if isinstance(key, slice):
            k_start, k_stop, k_step = self.slice_to_numerical_args(
                key, self.num_examples)
            return slice(start + k_start, start + k_stop, k_step)
        return [start + int(k) for k in key]

    def index_within_subset(self, indexable: Any, subset_request: Any,
                            sort_indices: bool = False) -> Any:
        """Answer ``subset_request`` (in subset indices) from ``indexable``."""
        request = self[subset_request]
        if isinstance(request, numbers.Integral) or isinstance(request, slice):
            return indexable[request]
        if sort_indices:
            return self.sorted_fancy_indexing(indexable, request)
        return iterable_fancy_indexing(indexable, request)

    @staticmethod
    def sorted_fancy_indexing(indexable: Any, request: list[int]) -> Any:
        """Fancy-index in increasing order (h5py needs it), then restore."""
        if len(request) > 1:
            order = numpy.argsort(request)
            data = numpy.empty((len(request),) + indexable.shape[1:],
                               dtype=indexable.dtype)
            data[order] = indexable[numpy.asarray(request)[order], ...]
            return data
        return indexable[request]


def lazy_property_factory(lazy_property: str) -> property:
    """A property that calls ``self.load()`` the first time it is read."""
    attribute = "_" + lazy_property

    def getter(self: Any) -> Any:
        if not hasattr(self, attribute):
            self.load()
        if not hasattr(self, attribute):
            raise ValueError(f"{lazy_property} wasn't loaded: "
                             f"{type(self).__name__}.load() must set it")
        return getattr(self, attribute)

    def setter(self: Any, value: Any) -> None:
        setattr(self, attribute, value)

    return property(getter, setter)


def do_not_pickle_attributes(*lazy_properties: str) -> Callable[[type], type]:
    """Class decorator: leave ``lazy_properties`` out of pickles.

    The class must define ``load()``, which sets the attributes; they are
    loaded on first access, after construction and after unpickling.
    """
    def wrap_class(cls: type) -> type:
        if not inspect.isfunction(getattr(cls, "load", None)):
            raise ValueError(f"{cls.__name__} must define load() to use "
                             "do_not_pickle_attributes")
        for name in lazy_properties:
            setattr(cls, name, lazy_property_factory(name))

        def __getstate__(self: Any) -> dict[str, Any]:
            state = self.__dict__.copy()
            for name in lazy_properties:
                value = state.pop("_" + name, None)
                if isinstance(value, collections.abc.Iterator):
                    raise ValueError(f"{name} holds an iterator, which "
                                     "cannot be lazily reloaded")
            return state

        cls.__getstate__ = __getstate__  # type: ignore[attr-defined]
        return cls
    return wrap_class


def find_in_data_path(filename: str) -> str:
    """The first ``filename`` found in ``config.data_path``.

    Raises
    ------
    IOError
        If no directory of the data path holds it.

    """
    for path in config.data_path:
        candidate = os.path.join(os.path.expanduser(path), filename)
        if os.path.isfile(candidate):
            return candidate
    raise OSError(f"{filename} not found in shmfuel's data path "
                  f"{config.data_path}; set SHMFUEL_DATA_PATH")


__all__ = ["Subset", "do_not_pickle_attributes", "find_in_data_path",
           "iterable_fancy_indexing", "lazy_property_factory"]
