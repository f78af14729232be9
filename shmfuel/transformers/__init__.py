"""Transformers: streams that wrap streams.

The classes and their Fuel behaviour are documented one by one; the rules
they share (label propagation, example/batch checks) are in
:class:`Transformer`.
"""

from shmfuel.transformers._base import (
    AgnosticSourcewiseTransformer,
    AgnosticTransformer,
    ExpectsAxisLabels,
    SourcewiseTransformer,
    Transformer,
)
from shmfuel.transformers._batching import Batch, Cache, Padding, Unpack
from shmfuel.transformers._multiprocessing import BackgroundProcess, MultiProcessing
from shmfuel.transformers._sourcewise import Cast, Flatten, ForceFloatX, ScaleAndShift
from shmfuel.transformers._structure import (
    Filter,
    FilterSources,
    Mapping,
    Merge,
    Rename,
    SortMapping,
)

__all__ = [
    "AgnosticSourcewiseTransformer", "AgnosticTransformer",
    "BackgroundProcess", "Batch", "Cache", "Cast", "ExpectsAxisLabels",
    "Filter", "FilterSources", "Flatten", "ForceFloatX", "Mapping", "Merge",
    "MultiProcessing", "Padding", "Rename", "ScaleAndShift", "SortMapping",
    "SourcewiseTransformer", "Transformer", "Unpack",
]
