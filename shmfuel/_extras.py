"""Optional dependencies: imported on use, with the install that fixes a miss."""

from __future__ import annotations

import importlib
from typing import Any


def require(module: str, extra: str, who: str) -> Any:
    """Import ``module``, or raise ImportError naming ``pip install 'shmfuel[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{who} needs {module}: pip install "
                          f"'shmfuel[{extra}]'") from exc
