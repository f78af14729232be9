"""File helpers."""

from __future__ import annotations

import gzip
from typing import IO, Any


def open_(filename: str, mode: str = "r", encoding: str | None = None) -> IO[Any]:
    """Open a file, transparently decompressing ``.gz`` files."""
    if filename.endswith(".gz"):
        return gzip.open(filename, mode, encoding=encoding)  # type: ignore[return-value]
    return open(filename, mode, encoding=encoding)
