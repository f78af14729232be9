"""Every public exception of shmfuel.

Fuel's exceptions keep their names and bases (``AxisLabelsMismatchError`` is a
``ValueError``) so that ``except`` clauses written for Fuel keep working.
Errors that belong to shmfuel's own machinery derive from
:class:`ShmfuelError`; "you closed it" (:class:`ClosedError`) is kept apart
from "it broke" (:class:`ProducerDiedError`).
"""

from __future__ import annotations


class ShmfuelError(Exception):
    """Base class of the errors raised by shmfuel's own machinery."""


class AxisLabelsMismatchError(ValueError):
    """Axis labels of a source are not the ones a transformer expects."""


class ConfigurationError(ShmfuelError):
    """A configuration key was read while unset and without a default."""


class MissingInputFiles(ShmfuelError):
    """Input files that a dataset needs are missing.

    Parameters
    ----------
    message : str
        What went wrong.
    filenames : list of str
        The missing files.

    """

    def __init__(self, message: str, filenames: list[str]) -> None:
        self.filenames = filenames
        super().__init__(message, filenames)


class NeedURLPrefix(ShmfuelError):
    """A download needs a URL prefix that was not given."""


class ClosedError(ShmfuelError, RuntimeError):
    """The object was closed by its owner and cannot be used any more."""


class ProducerDiedError(ShmfuelError, RuntimeError):
    """A producer process ended without being asked to.

    Attributes
    ----------
    worker : int
        Index of the producer that died.
    pid : int or None
        Its process id.
    exitcode : int or None
        Its exit code; negative values are ``-signal`` as in
        :attr:`multiprocessing.Process.exitcode`.

    """

    def __init__(
        self, message: str, worker: int = 0, pid: int | None = None,
        exitcode: int | None = None,
    ) -> None:
        super().__init__(message)
        self.worker = worker
        self.pid = pid
        self.exitcode = exitcode


class PrefetchTimeoutError(ShmfuelError, TimeoutError):
    """A wait of the prefetcher took longer than its timeout."""


class SharedMemoryError(ShmfuelError, OSError):
    """Shared memory could not be set up (``/dev/shm`` too small, ...)."""


class RemoteTraceback(Exception):
    """The formatted traceback of an exception raised in another process.

    It is attached as ``__cause__`` of the re-raised exception, so the
    producer's traceback is printed above the consumer's.
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


__all__ = [
    "AxisLabelsMismatchError", "ClosedError", "ConfigurationError",
    "MissingInputFiles", "NeedURLPrefix", "PrefetchTimeoutError",
    "ProducerDiedError", "RemoteTraceback", "SharedMemoryError",
    "ShmfuelError",
]
