"""Where shmfuel's reference-count checks can be trusted.

The Prefetcher's consumer frees a ring slot, and the bridge's server sends
an array without copying it or reuses a send buffer, when a reference count
says that nothing else holds the memory. Those counts are exact in CPython
builds with the GIL (3.10 to 3.13, what shmfuel is tested on); free-threaded
builds (``python3.13t``) count references per thread and are refused.
"""

from __future__ import annotations

import sysconfig

from shmfuel.exceptions import ShmfuelError


def check_build(who: str) -> None:
    """Raise ShmfuelError naming ``who`` on a free-threaded CPython."""
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        raise ShmfuelError(
            f"{who} needs a CPython build with the GIL: it reuses shared "
            "memory once a reference count says nothing else holds it, and "
            "this free-threaded build (python3.13t) counts references "
            "differently. Run it with a standard CPython (python3.13)")
