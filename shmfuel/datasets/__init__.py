"""Datasets: stateless objects that answer requests with data."""

from shmfuel.datasets.base import Dataset, IndexableDataset, IterableDataset
from shmfuel.datasets.hdf5 import H5PYDataset
from shmfuel.datasets.npy import NpyDataset
from shmfuel.datasets.text import TextFile
from shmfuel.datasets.toy import Spiral, SwissRoll

__all__ = ["Dataset", "H5PYDataset", "IndexableDataset", "IterableDataset",
           "NpyDataset", "Spiral", "SwissRoll", "TextFile"]
