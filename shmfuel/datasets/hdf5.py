"""H5PYDataset: Fuel's HDF5 layout, read in or out of memory.

One file holds every split. Each source is a root-level HDF5 dataset; the
splits are rows of the root attribute ``split``, a 1-D compound array with
fields ``split``, ``source``, ``start``, ``stop``, ``indices`` (an object
reference to a dataset of example indices, or null), ``available`` and
``comment`` (see :meth:`H5PYDataset.create_split_array`, and
:func:`shmfuel.converters.fill_hdf5_file` to write such a file).

Variable-length sources are HDF5 vlen datasets of flattened examples with
a ``shapes`` dimension scale on their first axis giving each example's
shape. Axis labels come from the datasets' dimension labels.

h5py is an optional extra: ``pip install 'shmfuel[hdf5]'``.
"""

from __future__ import annotations

import numbers
import os
from collections import defaultdict
from typing import Any

import numpy

from shmfuel._extras import require
from shmfuel.datasets.base import Dataset
from shmfuel.schemes import SequentialExampleScheme
from shmfuel.utils import Subset, do_not_pickle_attributes


def require_h5py() -> Any:
    """The ``h5py`` module, or an ImportError naming the fix."""
    return require("h5py", "hdf5", "H5PYDataset")


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class _Handles:
    """Open h5py files shared per path, with reference counts."""

    files: dict[tuple[str, str | None], Any] = {}
    counts: dict[tuple[str, str | None], int] = defaultdict(int)
    pid = os.getpid()

    @classmethod
    def _reset_after_fork(cls) -> None:
        # A child must not use handles opened by its parent.
        if os.getpid() != cls.pid:
            cls.files, cls.counts, cls.pid = {}, defaultdict(int), os.getpid()

    @classmethod
    def acquire(cls, path: str, driver: str | None) -> Any:
        cls._reset_after_fork()
        key = (path, driver)
        if key not in cls.files:
            h5py = require_h5py()
            cls.files[key] = h5py.File(path, "r", driver=driver)
        cls.counts[key] += 1
        return cls.files[key]

    @classmethod
    def release(cls, path: str, driver: str | None) -> None:
        cls._reset_after_fork()
        key = (path, driver)
        if cls.counts.get(key, 0) <= 0:
            return
        cls.counts[key] -= 1
        if cls.counts[key] == 0:
            cls.files.pop(key).close()
            del cls.counts[key]


class H5PYState:
    """The state of an out-of-memory H5PYDataset: a shared file handle.

    It pickles as its path; an unpickled state (in a producer process, say)
    opens the file again on first use.
    """

    def __init__(self, path: str, driver: str | None) -> None:
        self.path = path
        self.driver = driver
        self._handle: Any = None

    @property
    def handle(self) -> Any:
        if self._handle is None:
            self._handle = _Handles.acquire(self.path, self.driver)
        return self._handle

    def close(self) -> None:
        if self._handle is not None:
            self._handle = None
            _Handles.release(self.path, self.driver)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "driver": self.driver, "_handle": None}


@do_not_pickle_attributes("data_sources", "source_shapes", "subsets",
                          "vlen_sources", "_file_axis_labels")
class H5PYDataset(Dataset):
    """A dataset stored in an HDF5 file in Fuel's layout.

    Parameters
    ----------
    file_or_path : str or h5py.File
        The file.
    which_sets : tuple of str
        The splits to read (their union). A bare string is refused.
    subset : slice or list of int, optional
        Examples to keep, counted within the splits.
    load_in_memory : bool
        Read the data into memory when loading, instead of from the file on
        each request.
    driver : str, optional
        The h5py driver.
    sort_indices : bool
        Read list requests in increasing order (h5py requires it) and put
        the examples back in the requested order.
    sources, axis_labels
        As for :class:`~shmfuel.datasets.Dataset`; axis labels default to
        the file's dimension labels.

    Requests are an int, a slice or a list of indices. The dataset pickles
    by path: the data is never pickled and the file is opened again where
    it is unpickled.

    """

    provides_sources: tuple[str, ...]

    def __init__(self, file_or_path: Any, which_sets: Any, subset: Any = None,
                 load_in_memory: bool = False, driver: str | None = None,
                 sort_indices: bool = True, **kwargs: Any) -> None:
        h5py = require_h5py()
        if isinstance(file_or_path, h5py.File):
            self.path = file_or_path.filename
        elif isinstance(file_or_path, (str, os.PathLike)):
            self.path = os.fspath(file_or_path)
        else:
            raise TypeError("file_or_path must be a path or an h5py.File, got "
                            f"{type(file_or_path).__name__}")
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"no HDF5 file at {self.path}")
        if not h5py.is_hdf5(self.path):
            raise OSError(f"{self.path} is not an HDF5 file (no HDF5 signature); "
                          "write one with shmfuel.converters.to_hdf5, or read the "
                          "data with another dataset (NpyDataset for .npy files)")
        if isinstance(which_sets, str) or not all(
                isinstance(s, str) for s in which_sets):
            raise ValueError(f"which_sets must be a tuple of split names, "
                             f"e.g. ({which_sets!r},), got {which_sets!r}")
        self.which_sets = tuple(which_sets)
        if not self.which_sets:
            raise ValueError("which_sets must name at least one split")
        if subset is not None and not isinstance(subset, (slice, list)):
            raise TypeError(f"subset must be a slice or a list, got {subset!r}")
        self.user_given_subset = subset if subset is not None else slice(None)
        self.load_in_memory = load_in_memory
        self.driver = driver
        self.sort_indices = sort_indices
        with h5py.File(self.path, "r", driver=driver) as h5file:
            splits = self.get_all_splits(h5file)
            unknown = [s for s in self.which_sets if s not in splits]
            if unknown:
                raise ValueError(f"{self.path} has no split(s) {unknown}; it "
                                 f"has {sorted(splits)}")
            self.provides_sources = self.get_provided_sources(
                h5file, self.which_sets)
        if not self.provides_sources:
            raise ValueError(f"the splits {self.which_sets} have no source "
                             "in common")
        super().__init__(**kwargs)
        if self.axis_labels is None:
            labels = self._file_axis_labels
            self.axis_labels = {s: labels[s] for s in self.sources
                                if s in labels} or None
        self.example_iteration_scheme = SequentialExampleScheme(
            self.num_examples)

    # -- static helpers on the file ---------------------------------------------
    @staticmethod
    def create_split_array(split_dict: dict[str, dict[str, tuple[Any, ...]]]) -> numpy.ndarray:
        """The ``split`` attribute for ``{split: {source: (start, stop[,
        indices[, comment]])}}``."""
        h5py = require_h5py()
        rows = []
        for split, sources in split_dict.items():
            for source, info in sources.items():
                start, stop = info[0], info[1]
                indices = info[2] if len(info) > 2 else None
                comment = info[3] if len(info) > 3 else ""
                rows.append((split.encode(), source.encode(), start, stop,
                             indices, True, comment.encode()))
        length = max([len(r[0]) for r in rows] + [len(r[1]) for r in rows]
                     + [1])
        comment_length = max([len(r[6]) for r in rows] + [1])
        dtype = numpy.dtype([
            ("split", "S", length), ("source", "S", length),
            ("start", numpy.int64), ("stop", numpy.int64),
            ("indices", h5py.special_dtype(ref=h5py.Reference)),
            ("available", bool), ("comment", "S", comment_length)])
        array = numpy.empty(len(rows), dtype=dtype)
        for i, row in enumerate(rows):
            array[i] = (row[0], row[1], row[2], row[3],
                        row[4] if row[4] is not None else h5py.Reference(),
                        row[5], row[6])
        return array

    @staticmethod
    def _split_rows(h5file: Any) -> Any:
        if "split" not in h5file.attrs:
            raise ValueError(f"{h5file.filename} has no 'split' attribute: it "
                             "is not in H5PYDataset's layout (write it with "
                             "shmfuel.converters.fill_hdf5_file)")
        return h5file.attrs["split"]

    @staticmethod
    def get_all_splits(h5file: Any) -> tuple[str, ...]:
        rows = H5PYDataset._split_rows(h5file)
        return tuple(dict.fromkeys(_text(r["split"]) for r in rows))

    @staticmethod
    def get_all_sources(h5file: Any) -> tuple[str, ...]:
        rows = H5PYDataset._split_rows(h5file)
        return tuple(dict.fromkeys(_text(r["source"]) for r in rows))

    @staticmethod
    def get_provided_sources(h5file: Any, which_sets: Any) -> tuple[str, ...]:
        """Sources available in every one of ``which_sets``."""
        rows = H5PYDataset._split_rows(h5file)
        available = [{_text(r["source"]) for r in rows
                      if _text(r["split"]) == split and r["available"]}
                     for split in which_sets]
        common = set.intersection(*available) if available else set()
        return tuple(s for s in H5PYDataset.get_all_sources(h5file)
                     if s in common)

    @staticmethod
    def get_vlen_sources(h5file: Any) -> tuple[str, ...]:
        h5py = require_h5py()
        return tuple(s for s in H5PYDataset.get_all_sources(h5file)
                     if h5py.check_vlen_dtype(h5file[s].dtype) is not None)

    @staticmethod
    def get_axis_labels(h5file: Any) -> dict[str, tuple[str, ...]]:
        labels = {}
        for source in H5PYDataset.get_all_sources(h5file):
            dims = h5file[source].dims
            names = tuple(dim.label for dim in dims)
            if any(names):
                labels[source] = names
        return labels

    @staticmethod
    def get_subsets(h5file: Any, splits: Any, sources: Any) -> list[Subset]:
        """One Subset per source: the union of its rows in ``splits``."""
        rows = H5PYDataset._split_rows(h5file)
        subsets = []
        for source in sources:
            n = len(h5file[source])
            subset = Subset.empty_subset(n)
            for row in rows:
                if _text(row["source"]) != source or _text(row["split"]) not in splits:
                    continue
                if row["indices"]:
                    part = Subset(sorted(int(i) for i in h5file[row["indices"]][()]), n)
                else:
                    part = Subset(slice(int(row["start"]), int(row["stop"])), n)
                subset = part if subset.is_empty else subset + part
            subsets.append(subset)
        return subsets

    # -- loading -----------------------------------------------------------------
    def load(self) -> None:
        h5py = require_h5py()
        with h5py.File(self.path, "r", driver=self.driver) as h5file:
            self._file_axis_labels = self.get_axis_labels(h5file)
            self.vlen_sources = tuple(s for s in self.get_vlen_sources(h5file)
                                      if s in self.provides_sources)
            split_subsets = self.get_subsets(h5file, self.which_sets,
                                             self.provides_sources)
            self.subsets = [Subset.subset_of(s, self.user_given_subset)
                            for s in split_subsets]
            sizes = {s.num_examples for s in self.subsets}
            if len(sizes) > 1:
                raise ValueError(f"the sources of {self.which_sets} have "
                                 f"different numbers of examples: {sorted(sizes)}")
            self.source_shapes = {}
            for source in self.vlen_sources:
                dims = h5file[source].dims[0]
                if "shapes" not in dims.keys():
                    raise ValueError(f"variable-length source {source!r} has "
                                     "no 'shapes' dimension scale")
                self.source_shapes[source] = dims["shapes"][()]
            if self.load_in_memory:
                self.data_sources = [
                    self._read(h5file[source], subset, source, slice(None))
                    for source, subset in zip(self.provides_sources,
                                              self.subsets)]
            else:
                self.data_sources = []

    @property
    def num_examples(self) -> int:
        return self.subsets[0].num_examples

    def open(self) -> Any:
        if self.load_in_memory:
            return None
        return H5PYState(self.path, self.driver)

    def close(self, state: Any) -> None:
        if isinstance(state, H5PYState):
            state.close()

    def reset(self, state: Any) -> Any:
        return state if state is not None or self.load_in_memory else self.open()

    def next_epoch(self, state: Any) -> Any:
        return self.reset(state)

    def _read(self, dataset: Any, subset: Subset, source: str,
              request: Any) -> Any:
        data = subset.index_within_subset(dataset, request,
                                          sort_indices=self.sort_indices)
        if source in self.vlen_sources:
            shapes = subset.index_within_subset(self.source_shapes[source],
                                                request)
            if isinstance(request, numbers.Integral):
                return numpy.asarray(data).reshape(shapes)
            examples = numpy.empty(len(data), dtype=object)
            for i, (example, shape) in enumerate(zip(data, shapes)):
                examples[i] = numpy.asarray(example).reshape(shape)
            return examples
        return data

    def get_data(self, state: Any = None, request: Any = None) -> tuple[Any, ...]:
        if request is None:
            raise ValueError("H5PYDataset needs a request: an int, a slice or "
                             "a list of indices")
        if isinstance(request, numbers.Integral):
            request = int(request)
        elif not isinstance(request, (slice, list)):
            raise TypeError("a request is an int, a slice or a list of ints, "
                            f"got {type(request).__name__}")
        if self.load_in_memory:
            whole = Subset(slice(0, self.num_examples), self.num_examples)
            data = [whole.index_within_subset(d, request)
                    for d in self.data_sources]
        else:
            if not isinstance(state, H5PYState):
                raise ValueError("H5PYDataset.get_data needs the state made "
                                 "by open()")
            h5file = state.handle
            data = [self._read(h5file[source], subset, source, request)
                    for source, subset in zip(self.provides_sources,
                                              self.subsets)
                    if source in self.sources]
            return self._in_source_order(data)
        return self._in_source_order([d for d, source in zip(
            data, self.provides_sources) if source in self.sources])

    def _in_source_order(self, data: list[Any]) -> tuple[Any, ...]:
        read = [s for s in self.provides_sources if s in self.sources]
        by_source = dict(zip(read, data))
        return tuple(by_source[source] for source in self.sources)
