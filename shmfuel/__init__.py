"""shmfuel: Fuel's data pipeline with a shared-memory prefetcher.

The pipeline lives in :mod:`shmfuel.datasets`, :mod:`shmfuel.schemes`,
:mod:`shmfuel.streams` and :mod:`shmfuel.transformers`, under Fuel's module
paths. :class:`Prefetcher` runs a stream in producer processes and hands out
batches from shared memory.
"""

from shmfuel.config_parser import config
from shmfuel.prefetch import Prefetcher

__version__ = "0.1.0"

__all__ = ["Prefetcher", "__version__", "config"]
