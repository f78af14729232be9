"""Fuel's ``fill_hdf5_file``: concatenate each source's splits into one file."""

from __future__ import annotations

from typing import Any

import numpy


def _ragged(values: Any) -> bool:
    if isinstance(values, numpy.ndarray) and values.dtype != object:
        return False
    return len({numpy.shape(v) for v in values}) > 1 or (
        isinstance(values, numpy.ndarray) and values.dtype == object)


def fill_hdf5_file(h5file: Any, data: tuple[tuple[str, str, Any, str], ...]) -> None:
    """Write ``data`` into ``h5file`` in H5PYDataset's layout.

    Parameters
    ----------
    h5file : h5py.File
        A file open for writing.
    data : tuple of (split, source, values, comment)
        ``values`` is an array whose first axis is the examples, or a list
        of arrays of different shapes (a variable-length source). A source's
        splits are stored one after the other, in the order given.

    Raises
    ------
    ValueError
        If a source's splits disagree in dtype or in the shape of their
        examples.

    """
    from shmfuel.datasets.hdf5 import H5PYDataset, require_h5py
    h5py = require_h5py()
    by_source: dict[str, list[tuple[str, Any, str]]] = {}
    for split, source, values, comment in data:
        by_source.setdefault(source, []).append((split, values, comment))
    split_dict: dict[str, dict[str, tuple[Any, ...]]] = {}
    for source, parts in by_source.items():
        ragged = any(_ragged(values) for _, values, _ in parts)
        if ragged:
            examples = [numpy.asarray(v) for _, values, _ in parts for v in values]
            dtypes = {e.dtype for e in examples}
            if len(dtypes) != 1:
                raise ValueError(f"source {source!r} mixes dtypes {dtypes}")
            ndims = {e.ndim for e in examples}
            if len(ndims) != 1:
                raise ValueError(f"source {source!r} mixes examples of "
                                 f"{sorted(ndims)} dimensions")
            dataset = h5file.create_dataset(
                source, (len(examples),),
                dtype=h5py.vlen_dtype(dtypes.pop()))
            for i, example in enumerate(examples):
                dataset[i] = example.ravel()
            shapes = h5file.create_dataset(
                f"{source}_shapes",
                data=numpy.array([e.shape for e in examples], dtype=numpy.int64))
            shapes.make_scale("shapes")
            dataset.dims[0].attach_scale(shapes)
        else:
            arrays = [numpy.asarray(values) for _, values, _ in parts]
            if len({a.shape[1:] for a in arrays}) != 1:
                raise ValueError(f"the splits of source {source!r} have "
                                 "examples of different shapes: "
                                 f"{[a.shape[1:] for a in arrays]}")
            h5file.create_dataset(source, data=numpy.concatenate(arrays))
        start = 0
        for split, values, comment in parts:
            stop = start + len(values)
            split_dict.setdefault(split, {})[source] = (start, stop, None,
                                                        comment)
            start = stop
    h5file.attrs["split"] = H5PYDataset.create_split_array(split_dict)
