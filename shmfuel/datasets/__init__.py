"""Datasets: stateless objects that answer requests with data."""

from shmfuel.datasets.base import Dataset, IndexableDataset, IterableDataset
from shmfuel.datasets.text import TextFile
from shmfuel.datasets.toy import Spiral, SwissRoll

__all__ = ["Dataset", "IndexableDataset", "IterableDataset", "Spiral",
           "SwissRoll", "TextFile"]
