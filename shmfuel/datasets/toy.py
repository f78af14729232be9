"""Toy datasets generated from a seed: Spiral and SwissRoll."""

from __future__ import annotations

from typing import Any

import numpy

from shmfuel.config_parser import config
from shmfuel.datasets.base import IndexableDataset


class Spiral(IndexableDataset):
    """Points on the arms of a spiral.

    Parameters
    ----------
    num_examples : int
        Number of points.
    classes : int
        Number of arms; ``label`` says which arm a point lies on.
    cycles : float
        Turns of each arm; ``position`` is uniform in ``[0, cycles)``.
    noise : float
        Standard deviation of Gaussian noise added to the coordinates.
    seed : int, optional
        Defaults to ``config.default_seed``.

    Sources: ``features`` (N x 2, float32), ``position`` (N,), ``label``
    (N, int).

    """

    def __init__(self, num_examples: int = 1000, classes: int = 1,
                 cycles: float = 1., noise: float = 0.0, **kwargs: Any) -> None:
        seed = kwargs.pop("seed", config.default_seed)
        rng = numpy.random.RandomState(seed)
        position = rng.uniform(0., cycles, size=num_examples)
        label = rng.randint(0, classes, size=num_examples)
        angle = 2 * numpy.pi * (position + label / classes)
        radius = position / cycles
        features = numpy.stack([radius * numpy.cos(angle),
                                radius * numpy.sin(angle)], axis=1)
        features += noise * rng.normal(size=features.shape)
        super().__init__({"features": features.astype("float32"),
                          "position": position, "label": label}, **kwargs)


class SwissRoll(IndexableDataset):
    """Points on a rolled-up plane in 3-D.

    Parameters
    ----------
    num_examples : int
        Number of points.
    noise : float
        Standard deviation of Gaussian noise added to the coordinates.
    seed : int, optional
        Defaults to ``config.default_seed``.

    Sources: ``features`` (N x 3, float32) and ``position`` (N x 2, float32,
    the point's coordinates on the unrolled plane, in ``[0, 1)``).

    """

    def __init__(self, num_examples: int = 1000, noise: float = 0.0,
                 **kwargs: Any) -> None:
        seed = kwargs.pop("seed", config.default_seed)
        rng = numpy.random.RandomState(seed)
        position = rng.uniform(size=(num_examples, 2))
        turn = 1.5 * numpy.pi * (1 + 2 * position[:, 0])
        features = numpy.stack([turn * numpy.cos(turn), 10 * position[:, 1],
                                turn * numpy.sin(turn)], axis=1) / 15
        features += noise * rng.normal(size=features.shape)
        super().__init__({"features": features.astype("float32"),
                          "position": position.astype("float32")}, **kwargs)
