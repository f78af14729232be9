"""What belongs to the process that made it.

Producer pools and connected bridge clients serve the process that made
them. In a forked child (``os.fork``, multiprocessing's fork, a DataLoader
worker) each one still alive is handed to its hook, which makes it refuse
to be used there and leaves what serves the parent alone.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import Any

_owned: weakref.WeakKeyDictionary[Any, Callable[[Any], None]] = (
    weakref.WeakKeyDictionary())


def own(thing: Any, hook: Callable[[Any], None]) -> None:
    """Call ``hook(thing)`` in a child forked while ``thing`` is alive."""
    _owned[thing] = hook


def disown(thing: Any) -> None:
    _owned.pop(thing, None)


def _forked() -> None:
    for thing, hook in list(_owned.items()):
        hook(thing)
    _owned.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)
