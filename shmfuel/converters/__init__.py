"""Writing datasets in H5PYDataset's layout from numpy arrays.

``fill_hdf5_file(h5file, data)`` is Fuel's generic converter step;
:func:`to_hdf5` does the whole job in one call::

    from shmfuel.converters import to_hdf5
    to_hdf5("mnist.hdf5", {"train": {"features": x_train, "targets": y_train},
                           "test": {"features": x_test, "targets": y_test}},
            axis_labels={"features": ("batch", "height", "width")})
    H5PYDataset("mnist.hdf5", which_sets=("train",))

A source given as a list of arrays whose shapes differ is stored as a
variable-length source (flattened examples plus a ``shapes`` scale).
"""

from __future__ import annotations

import os
from typing import Any

from shmfuel.converters.base import fill_hdf5_file

__all__ = ["fill_hdf5_file", "to_hdf5"]


def to_hdf5(path: str | os.PathLike[str], splits: dict[str, dict[str, Any]],
            axis_labels: dict[str, tuple[str, ...]] | None = None,
            comments: dict[str, str] | None = None) -> str:
    """Write ``{split: {source: array}}`` to a new HDF5 file at ``path``.

    Every split must give the same sources. Returns the path.
    """
    from shmfuel.datasets.hdf5 import require_h5py
    h5py = require_h5py()
    if not splits:
        raise ValueError("splits is empty: give {split: {source: array}}")
    names = [tuple(sources) for sources in splits.values()]
    if len(set(names)) != 1:
        raise ValueError(f"every split must have the same sources, got {names}")
    data = []
    for split, sources in splits.items():
        for source, values in sources.items():
            data.append((split, source, values,
                         (comments or {}).get(split, "")))
    path = os.fspath(path)
    with h5py.File(path, "w") as h5file:
        fill_hdf5_file(h5file, tuple(data))
        for source, labels in (axis_labels or {}).items():
            if source not in h5file:
                raise ValueError(f"axis labels for unknown source {source!r}")
            for dim, label in zip(h5file[source].dims, labels):
                dim.label = label
    return path

