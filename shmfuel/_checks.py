"""Checks of arguments that every public entry point shares.

A flag given as a string or a number is refused rather than read as
truthy: ``allow_pickle="False"`` must not allow pickles.
"""

from __future__ import annotations

import numbers
from typing import Any, Literal, overload

import numpy


def whole(value: Any) -> bool:
    """Whether ``value`` is an int (numpy's too), and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def flag(name: str, value: Any) -> bool:
    """``value`` if it is a bool (numpy's too); else a TypeError naming
    ``name``."""
    if isinstance(value, (bool, numpy.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r}")


@overload
def seconds(name: str, value: Any, optional: Literal[False] = False) -> float:
    ...


@overload
def seconds(name: str, value: Any, optional: bool) -> float | None:
    ...


def seconds(name: str, value: Any, optional: bool = False) -> float | None:
    """``value`` as a positive number of seconds (or None if ``optional``);
    else a TypeError or ValueError naming ``name``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        either = " or None" if optional else ""
        raise TypeError(f"{name} must be a number of seconds{either}, got "
                        f"{value!r}")
    number = float(value)
    if not number > 0:  # NaN too
        either = " or None" if optional else ""
        raise ValueError(f"{name} must be positive{either}, got {value!r}")
    return number
