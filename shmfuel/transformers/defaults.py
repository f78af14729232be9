"""Default transformers that datasets apply to their streams."""

from __future__ import annotations

from typing import Any

import numpy

from shmfuel.transformers._base import SourcewiseTransformer
from shmfuel.transformers._sourcewise import Cast, ScaleAndShift


class ToBytes(SourcewiseTransformer):
    """Turns each uint8 array example into ``bytes``.

    A batch gives a list of ``bytes``. Axis labels become ``('bytes',)``,
    or ``('batch', 'bytes')`` for batches.
    """

    def __init__(self, stream: Any, **kwargs: Any) -> None:
        kwargs.setdefault("produces_examples", stream.produces_examples)
        super().__init__(stream, **kwargs)
        if self.axis_labels:
            labels = dict(self.axis_labels)
            for source in self.which_sources:
                labels[source] = (("bytes",) if self.produces_examples
                                  else ("batch", "bytes"))
            self.axis_labels = labels

    def transform_source_example(self, source_example: Any,
                                 source_name: str) -> bytes:
        return numpy.asarray(source_example).tobytes()

    def transform_source_batch(self, source_batch: Any,
                               source_name: str) -> list[bytes]:
        return [numpy.asarray(example).tobytes() for example in source_batch]


def uint8_pixels_to_floatX(which_sources: Any) -> tuple[Any, ...]:
    """Default transformers scaling uint8 pixels to floatX in ``[0, 1]``."""
    return ((ScaleAndShift, [1 / 255.0, 0], {"which_sources": which_sources}),
            (Cast, ["floatX"], {"which_sources": which_sources}))


__all__ = ["ToBytes", "uint8_pixels_to_floatX"]
